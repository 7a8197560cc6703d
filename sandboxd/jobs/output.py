"""A request's output: its program's and tools' output streamed as events within the request's
output limit (``Output``), the bounded collector a tool's output is kept in before it is cleaned
(``collector``), and a request's interactive stdin (``Stdin``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sandboxd.status import Phase
from sandboxd.wire.events import StreamDecoder, output_event

Emit = Callable[[dict[str, Any]], None]


class Output:
    """One request's output stream: stdout and stderr events, at most ``limit`` bytes in all;
    ``sent_bytes`` is what went out.  ``phase`` says which phase the events belong to."""

    def __init__(self, request_id: str | None, limit: int, emit: Emit,
                 phase: Callable[[], Phase]) -> None:
        self.request_id = request_id
        self.limit = limit
        self.emit = emit
        self.phase = phase
        self.sent_bytes = 0
        self._decoders = {"stdout": StreamDecoder(), "stderr": StreamDecoder()}

    @property
    def full(self) -> bool:
        return self.sent_bytes >= self.limit

    def stream(self, stream: str, data: bytes, timestamp: str) -> int:
        """Send what fits of ``data``; how much that was (a child stops at less than all)."""
        room = self.limit - self.sent_bytes
        take = data[: max(0, room)]
        if take:
            self.sent_bytes += len(take)
            text, raw = self._decoders[stream].feed(take)
            if text or raw:
                self.emit(output_event(self.request_id, stream, self.phase(), text, raw,
                                       timestamp))
        return len(take)

    def send(self, stream: str, data: bytes) -> None:
        """Text of the daemon's own (cleaned diagnostics): sent whole, now."""
        self.stream(stream, data, "")
        self.flush()

    def flush(self) -> None:
        for stream, decoder in self._decoders.items():
            text, raw = decoder.flush()
            if text or raw:
                self.emit(output_event(self.request_id, stream, self.phase(), text, raw))


def collector(limit: int) -> tuple[list[bytes], Callable[[str, bytes, str], int]]:
    """A sink that keeps a tool's output up to ``limit`` bytes and 64 KiB more: the text is
    cleaned before ``limit`` applies, and a cut fragment would clean away to nothing."""
    cap = limit + 64 * 1024
    collected: list[bytes] = []
    size = [0]

    def collect(stream: str, data: bytes, timestamp: str) -> int:
        room = max(0, cap - size[0])
        collected.append(data[:room])
        size[0] += len(data)
        return len(data)

    return collected, collect


class Stdin:
    """An interactive request's stdin: what came before the program started, and its end."""

    def __init__(self, request_id: str | None, interactive: bool) -> None:
        self.request_id = request_id
        self.interactive = interactive
        self.pending: list[bytes] = []
        self.bytes = 0
        self.eof = False

    def refuse(self, data: bytes, limit: int) -> str | None:
        """Why ``data`` cannot be taken, or None (and it is counted)."""
        if not self.interactive:
            return f"request {self.request_id!r} is not interactive (send \"interactive\": true)"
        if self.eof:
            return f"the stdin of request {self.request_id!r} is already closed"
        if self.bytes + len(data) > limit:
            return (f"stdin of request {self.request_id!r} would exceed this server's maximum "
                    f"({limit} bytes); this data was dropped")
        self.bytes += len(data)
        return None

    def hand_over(self, child: Any) -> None:
        """Give a program that just started what came before it, and the end if it came."""
        for data in self.pending:
            child.write_stdin(data)
        self.pending.clear()
        if self.eof:
            child.close_stdin()
