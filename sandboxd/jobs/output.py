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

    def take(self, data: bytes) -> bytes:
        """What fits of ``data`` within the limit, counted as sent (the caller sends it in
        its own events: per-test events)."""
        take = data[: max(0, self.limit - self.sent_bytes)]
        self.sent_bytes += len(take)
        return take

    def stream(self, stream: str, data: bytes, timestamp: str,
               extra: dict[str, Any] | None = None) -> int:
        """Send what fits of ``data``; how much that was (a child stops at less than all).
        ``extra``: more fields for its event (a faketime run's ``delay_ms``)."""
        take = self.take(data)
        if take:
            text, raw = self._decoders[stream].feed(take)
            if text or raw:
                event = output_event(self.request_id, stream, self.phase(), text, raw,
                                     timestamp)
                self.emit({**event, **extra} if extra else event)
        return len(take)

    def send(self, stream: str, data: bytes) -> None:
        """Text of the daemon's own (cleaned diagnostics): sent whole, now."""
        self.stream(stream, data, "")
        self.flush()

    def flush(self, extra: dict[str, Any] | None = None) -> None:
        for stream, decoder in self._decoders.items():
            text, raw = decoder.flush()
            if text or raw:
                event = output_event(self.request_id, stream, self.phase(), text, raw)
                self.emit({**event, **extra} if extra else event)


class Collector:
    """A child's output kept (not streamed) up to ``cap`` bytes, the one bounded collector:
    a build's or a tool's output before it is cleaned, a launcher's few words.  As a child's
    sink it answers that it took everything, or (``stop_when_full``) only what fit, which
    stops the child for its output limit."""

    def __init__(self, cap: int, stop_when_full: bool = False) -> None:
        self.cap = cap
        self.stop_when_full = stop_when_full
        self.size = 0  # all that came, kept or not
        self.chunks: list[tuple[str, bytes]] = []

    def __call__(self, stream: str, data: bytes, timestamp: str) -> int:
        room = max(0, self.cap - self.size)
        self.chunks.append((stream, data[:room]))
        self.size += len(data)
        return min(len(data), room) if self.stop_when_full else len(data)

    def joined(self, stream: str | None = None) -> bytes:
        """What was kept, of one stream or of both in the order it came."""
        return b"".join(data for name, data in self.chunks if stream in (None, name))


def collector(limit: int) -> Collector:
    """A build's output kept up to ``limit`` bytes and 64 KiB more: the text is cleaned
    before ``limit`` applies, and a cut fragment would clean away to nothing."""
    return Collector(limit + 64 * 1024)


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
