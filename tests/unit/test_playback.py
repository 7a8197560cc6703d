"""The fake clock's playback records read back (sandboxd.golang.playback) and put in order
(sandboxd.jobs.fakeclock): golang/playground's own decode cases, any split, hostile input."""

from __future__ import annotations

import struct

import pytest

from sandboxd.golang.playback import EPOCH_NS, Merger, StreamDecoder
from sandboxd.jobs.fakeclock import FakeClock
from sandboxd.web.play import events_of

SECOND = 1_000_000_000


def record(offset_ns: int, data: bytes) -> bytes:
    return b"\x00\x00PB" + struct.pack(">qI", EPOCH_NS + offset_ns, len(data)) + data


def playground_events(merger: Merger) -> list[tuple[str, str, int]]:
    """As golang/playground's Recorder.Events: (Message, Kind, Delay)."""
    merger.flush()
    run = [{"phase": "run", "stream": p.stream, "output": p.data.decode(),
            "fake_time_ns": p.time_ns} for p, _, _ in merger.take()]
    events = events_of(_Collected(run)) or []
    return [(e["Message"], e["Kind"], e["Delay"]) for e in events]


class _Collected:
    def __init__(self, events):
        self.events = [*events, {"done": True}]

    @property
    def final(self):
        return self.events[-1]


def playground_case() -> tuple[list[tuple[str, bytes]], list[tuple[str, str, int]]]:
    """golang/playground play_test.go's TestDecode, its writes and its expected events."""
    writes = [
        ("stdout", b"head"), ("stdout", record(0, b"one")), ("stdout", record(0, b"two")),
        ("stderr", record(SECOND, b"three")), ("stderr", record(2 * SECOND, b"five")),
        ("stdout", record(2 * SECOND - 1, b"four")), ("stderr", record(2 * SECOND, b"six")),
        ("stdout", b"middle"), ("stdout", record(3 * SECOND, b"seven")), ("stdout", b"tail"),
    ]
    want = [("headonetwo", "stdout", 0), ("three", "stderr", SECOND),
            ("fourmiddle", "stdout", SECOND - 1), ("fivesix", "stderr", 1),
            ("seventail", "stdout", SECOND)]
    return writes, want


def test_the_playgrounds_own_decode_case():
    writes, want = playground_case()
    merger = Merger()
    for stream, data in writes:
        merger.feed(stream, data)
    assert playground_events(merger) == want


@pytest.mark.parametrize("size", [1, 2, 3, 5, 15, 16, 17])
def test_records_split_anywhere(size):
    writes, want = playground_case()
    merger = Merger()
    for stream in ("stdout", "stderr"):
        whole = b"".join(data for s, data in writes if s == stream)
        for i in range(0, len(whole), size):
            merger.feed(stream, whole[i:i + size])
    assert playground_events(merger) == want


def test_hostile_records():
    decoder = StreamDecoder("stdout")
    # A length of 4 GiB - 1 holds nothing: the data goes on as it comes.
    pieces = decoder.feed(b"\x00\x00PB" + struct.pack(">qI", EPOCH_NS + 5, 0xFFFFFFFF) + b"x")
    assert [(p.time_ns, p.data) for p in pieces] == [(EPOCH_NS + 5, b"x")]
    assert decoder._left == 0xFFFFFFFF - 1
    # A time before the last (or negative) is at the last; a cut header at the end is data.
    decoder = StreamDecoder("stdout")
    pieces = decoder.feed(record(10, b"a") + b"\x00\x00PB" + struct.pack(">qI", -1, 1) + b"b"
                          + b"\x00\x00P")
    assert [(p.time_ns - EPOCH_NS, p.data) for p in pieces] == [(10, b"ab")]
    assert [p.data for p in decoder.flush()] == [b"\x00\x00P"]


def test_delay_ms_adds_up_to_the_fake_time():
    merger = Merger()
    for i in range(1, 5):  # 0.6 ms apart: 0, 1, 0, 1 whole milliseconds, then one hour
        merger.feed("stdout", record(i * 600_000, b"."))
    merger.feed("stdout", record(3600 * SECOND, b"!"))
    merger.empty("stderr", ended=True)
    delays = [ms for _, _, ms in merger.take()]
    assert delays == [0, 1, 0, 1, 3_600_000 - 2]
    assert sum(delays) == 3_600_000


def test_fakeclock_orders_both_pipes_after_draining_them():
    """A chunk of stdout read before an earlier stderr write: the drain reads stderr first,
    and the events go out in the order they were written."""
    sent: list[tuple[str, bytes, dict]] = []
    pipes = {"stdout": [], "stderr": [record(1, b"B\n")]}

    def deliver(stream, data, fields):
        sent.append((stream, data, fields))
        return len(data)

    def drain(empty):
        for stream in ("stdout", "stderr"):
            while pipes[stream]:
                clock(stream, pipes[stream].pop(0), "")
            empty(stream, False)

    clock = FakeClock(deliver, drain, 1 << 20)
    assert clock("stdout", record(0, b"A\n") + record(2, b"A\n"), "") > 0
    assert [(s, d, f["delay_ms"], f["fake_time_ns"] - EPOCH_NS) for s, d, f in sent] == [
        ("stdout", b"A\n", 0, 0), ("stderr", b"B\n", 0, 1), ("stdout", b"A\n", 0, 2)]


def test_a_write_after_its_pipe_was_read_empty_still_goes_first():
    """The program writes o0 e1 o2 e3 while the pipes are read one after the other: stdout
    (o0 read) is found empty, then e1, o2, e3 are written, and the stderr read finds e1 e3.
    They wait until stdout's o2 is read (by the reactor, then the next drain finds both
    pipes empty): the order is the program's."""
    sent: list[bytes] = []
    rounds = [{"stdout": [], "stderr": [record(1, b"e1") + record(3, b"e3")]},
              {"stdout": [], "stderr": []}]

    def deliver(stream, data, fields):
        sent.append(data)
        return len(data)

    def drain(empty):
        pipes = rounds.pop(0)
        for stream in ("stdout", "stderr"):
            for chunk in pipes[stream]:
                clock(stream, chunk, "")
            empty(stream, False)

    clock = FakeClock(deliver, drain, 1 << 20)
    clock("stdout", record(0, b"o0"), "")
    assert sent == [b"o0"]  # e1 and e3 wait: stdout may still hold something earlier
    clock("stdout", record(2, b"o2"), "")
    assert sent == [b"o0", b"e1", b"o2", b"e3"]
    clock.end()
    assert sent == [b"o0", b"e1", b"o2", b"e3"]


def test_fakeclock_stops_at_the_output_limit():
    room = [3]

    def deliver(stream, data, fields):
        took = min(len(data), room[0])
        room[0] -= took
        return took

    def drain(empty):
        empty("stdout", False)
        empty("stderr", False)

    clock = FakeClock(deliver, drain, 1 << 20)
    assert clock("stdout", record(0, b"abcdef"), "") == 0  # fewer than given: the child stops
    assert clock("stdout", record(1, b"more"), "") == 0


def test_a_program_that_keeps_both_pipes_full_holds_at_most_max_pending():
    merger = Merger(max_pending=100)
    merger.feed("stdout", record(5, b"x" * 60))
    assert merger.take() == []  # stderr was never found empty: it may hold something earlier
    merger.feed("stdout", record(6, b"y" * 60))
    assert [p.data[:1] for p, _, _ in merger.take()] == [b"x", b"y"]


def test_record_headers_count_against_the_output_limit():
    """Empty records (headers only) are read bytes too: the child stops at the limit."""
    sent: list[bytes] = []

    def deliver(stream, data, fields):
        sent.append(data)
        return len(data)

    def drain(empty):
        empty("stdout", False)
        empty("stderr", False)

    clock = FakeClock(deliver, drain, 100)
    assert clock("stdout", record(0, b"") * 5, "") == 80  # 16-byte headers, no data
    assert clock("stdout", record(1, b"ab") + record(2, b"") * 5, "") == 0  # past 100 read
    clock.end()
    assert b"".join(sent) == b"ab"
