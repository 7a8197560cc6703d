"""Per-test events of a test run: a port of Go's ``cmd/internal/test2json`` converter.

The test binary runs with ``-test.v=test2json`` (Go 1.20 and later): the testing package then
begins every framing line (``=== RUN``, ``=== PAUSE``, ``=== CONT``, ``=== NAME``, ``--- PASS:``,
``--- FAIL:``, ``--- SKIP:``, the last ``PASS``/``FAIL``) with the marker ``^V`` (0x16), wraps
``t.Error`` text in ``^O`` … ``^N`` and escapes those markers in ``t.Log`` text with ``^[``.  This
converter turns that stream into events as ``go test -json`` has them (action ``run``, ``pause``,
``cont``, ``pass``, ``fail``, ``skip``, ``output``; test name; elapsed seconds; output text),
subtests included.  Unlike test2json, an ``output`` event holds all the whole lines of one
test that came together (up to 64 KiB), not one line each: a test that logs a lot makes as many
events as reads, not as lines (framing lines are still one event each).

One difference from test2json, on purpose: a framing line counts **only** with its ``^V``
(test2json trusts unmarked framing lines until it has seen a marked one).  So a program that
prints ``--- PASS: TestX`` with ``fmt.Println`` — before its first test or during one — makes an
output line, not a test.  A program that prints the marker itself can still fake events: the
test binary is the program, so nothing it prints can be proof; counts are for display.

Pure: bytes in, event dicts out (``Event``); the job turns them into wire events.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARK_FRAMING = 0x16  # ^V
MARK_ERR_BEGIN = 0x0F  # ^O
MARK_ERR_END = 0x0E  # ^N
MARK_ESCAPE = 0x1B  # ^[
RUN_FLAGS = ("-test.v=test2json",)

IN_BUFFER = 4096  # the longest framing line recognised (test2json's inBuffer)
OUT_BUFFER = 64 * 1024  # the most output in one event (test2json: 1 KiB, and a line each)

_UPDATES = (b"=== RUN   ", b"=== PAUSE ", b"=== CONT  ", b"=== NAME  ", b"=== PASS  ",
            b"=== FAIL  ", b"=== SKIP  ")
_REPORTS = (b"--- PASS: ", b"--- FAIL: ", b"--- SKIP: ", b"--- BENCH: ")
_EMPTY_NAME = b"=== NAME"
_LINE_END = re.compile(rb"[\n\x16\x1b]")  # what ends a line, and the escape that can hide ^V
_UNMARK = re.compile(rb"\x1b(.)|[\x0e\x0f]", re.DOTALL)


@dataclass
class Event:
    """One test action: ``test`` is None for output outside any test."""

    action: str
    test: str | None = None
    elapsed: float | None = None
    output: bytes | None = None


class Converter:
    """Feed it the test binary's stdout as it comes (``feed``), then ``close``; each call
    returns the events it completed.  Counts every test's and subtest's end in ``counts``."""

    def __init__(self) -> None:
        self.counts = {"pass": 0, "fail": 0, "skip": 0}
        self._in = b""  # an unfinished input line
        self._in_mid = False  # within an input line longer than IN_BUFFER
        self._out = b""  # an unfinished output line
        self._out_escaped = False  # the last output byte was ^[ (its next is literal)
        self._test: str | None = None  # the test that output is attributed to
        self._report: list[Event] = []  # --- results waiting for their subtests' (nesting)
        self._events: list[Event] = []

    # -- input -----------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Event]:
        buf = self._in + data if self._in else data
        start = 0
        while start < len(buf):
            if self._in_mid or buf[start] != MARK_FRAMING:  # output lines, as many as came
                end = _plain_end(buf, start)
                if end <= start:
                    break
                self._output(buf[start:end])
                self._in_mid = False
            else:
                end = _eol(buf, start)
                if end < 0:
                    break
                self._line(buf[start:end])
            start = end
        while len(buf) - start >= IN_BUFFER:  # no framing line is this long: output, in parts
            cut = start + _trim_utf8(buf[start:start + IN_BUFFER])
            self._output(buf[start:cut])
            start = cut
            self._in_mid = True
        self._in = buf[start:]
        return self._take()

    def close(self) -> list[Event]:
        """The end of the stream: what is left is output; results still held are sent."""
        if self._in:
            self._output(self._in)
            self._in = b""
        self._flush_output()
        self._flush_report()
        return self._take()

    def _line(self, line: bytes) -> None:
        if not line or line[0] != MARK_FRAMING:
            self._output(line)
            return
        self._flush_output()
        line = line[1:]
        trim = line.removesuffix(b"\n").removesuffix(b"\r")
        if trim == _EMPTY_NAME:  # "=== NAME  " whose spaces were lost
            line = b"=== NAME  \n"
            trim = line[:-1]
        if trim in (b"PASS", b"FAIL") or trim.startswith(b"FAIL\t"):
            self._flush_report()
            self._output(line, framing=True)
            return
        if line.startswith(_UPDATES):
            action, _, name = trim[4:].decode("utf-8", "replace").partition(" ")
            self._flush_report()
            self._test = name.strip() or None
            if action == "NAME":  # only says whose output follows
                return
            event = Event(action.lower(), self._test)
            if action == "PAUSE":  # test2json's order: the line, then the event
                self._output(line, framing=True)
                self._emit(event)
            else:
                self._emit(event)
                self._output(line, framing=True)
            return
        if line.startswith(_REPORTS):
            action, _, name = trim[4:].decode("utf-8", "replace").partition(" ")
            name = name.strip()
            elapsed = None
            i = name.find(" (")
            if i >= 0:
                if name.endswith("s)"):
                    try:
                        elapsed = float(name[i + 2:-2])
                    except ValueError:
                        elapsed = None
                name = name[:i]
            # As test2json does: the result waits until the next framing line (in this mode
            # the testing package prints every result unindented, a subtest's first), and
            # the output up to then is the test's.
            self._flush_report()
            self._test = name
            self._report.append(Event(action.rstrip(":").lower(), name, elapsed))
            self._output(line, framing=True)
            return
        self._output(line)  # a marked line that frames no test (=== ATTR, …): output

    # -- output ----------------------------------------------------------------------------

    def _output(self, data: bytes, framing: bool = False) -> None:
        """Output text, markers removed: its whole lines at once, in events of at most
        OUT_BUFFER bytes (a longer line in parts); an unfinished line waits for its end."""
        out = self._out + (data if framing else self._unmark(data))
        pos = 0
        while True:
            nl = out.rfind(b"\n", pos, pos + OUT_BUFFER)
            if nl >= 0:
                self._emit(Event("output", self._test, output=out[pos:nl + 1]))
                pos = nl + 1
            elif len(out) - pos >= OUT_BUFFER:
                cut = pos + _trim_utf8(out[pos:pos + OUT_BUFFER])
                self._emit(Event("output", self._test, output=out[pos:cut]))
                pos = cut
            else:
                break
        self._out = out[pos:]

    def _flush_output(self) -> None:
        if self._out:
            self._emit(Event("output", self._test, output=self._out))
            self._out = b""

    def _unmark(self, data: bytes) -> bytes:
        """``data`` without the error markers (^O, ^N), and each escaped byte (^[ X) as X."""
        if self._out_escaped and data:
            self._out_escaped = False
            return data[:1] + self._unmark(data[1:])
        if b"\x1b" not in data and b"\x0e" not in data and b"\x0f" not in data:  # memchr
            return data
        if data.endswith(b"\x1b") and _escapes_last(data):
            self._out_escaped = True
            data = data[:-1]
        return _UNMARK.sub(lambda m: m.group(1) or b"", data)

    # -- events ----------------------------------------------------------------------------

    def _flush_report(self) -> None:
        while self._report:
            self._emit(self._report.pop())
        self._test = None

    def _emit(self, event: Event) -> None:
        if event.action in self.counts and event.test:
            self.counts[event.action] += 1
        self._events.append(event)

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    @property
    def passed(self) -> int:
        return self.counts["pass"]

    @property
    def failed(self) -> int:
        return self.counts["fail"]

    @property
    def skipped(self) -> int:
        return self.counts["skip"]


def _trim_utf8(b: bytes) -> int:
    """The longest prefix length of ``b`` that does not end inside a UTF-8 sequence."""
    for back in range(1, min(4, len(b)) + 1):
        c = b[-back]
        if c & 0xC0 != 0x80:
            need = 2 if c & 0xE0 == 0xC0 else 3 if c & 0xF0 == 0xE0 else 4 if c & 0xF8 == 0xF0 \
                else 1
            return len(b) - back if back < need else len(b)
    return len(b)


def _eol(buf: bytes, start: int) -> int:
    """The end of the line that begins at ``start``: past its newline, or before a ^V that
    does not begin it; -1 when it has not ended.  ``^[`` escapes the byte after it (so an
    escaped ^V ends nothing), but never a newline."""
    pos = start
    while True:
        m = _LINE_END.search(buf, pos)
        if m is None:
            return -1
        i = m.start()
        c = buf[i]
        if c == 0x0A:
            return i + 1
        if c == MARK_ESCAPE:
            if i + 1 < len(buf) and buf[i + 1] == 0x0A:
                return i + 2
            pos = i + 2
            continue
        if i > start:  # ^V
            return i
        pos = i + 1


def _escapes_last(data: bytes) -> bool:
    """Whether the ^[ at the end of ``data`` is an escape (not itself escaped)."""
    run = len(data) - len(data.rstrip(b"\x1b"))
    return run % 2 == 1


def _plain_end(buf: bytes, start: int) -> int:
    """The end of the run of output lines that begins at ``start`` (which is no framing
    line's): before the next ^V that is not escaped, else past the last newline; ``start``
    when not even one line has ended."""
    pos = start + 1
    while True:
        p = buf.find(b"\x16", pos)
        if p < 0:
            return buf.rfind(b"\n", start) + 1 or start
        k = p
        while k > start and buf[k - 1] == MARK_ESCAPE:
            k -= 1
        if (p - k) % 2 == 0:
            return p
        pos = p + 1
