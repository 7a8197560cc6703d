"""A faketime run's output (``"faketime": true``): the program's playback records decoded
(``sandboxd.golang.playback``) and sent as output events in the order the program wrote them,
each with its fake ``delay_ms`` (and ``fake_time_ns``).

Both pipes are read apart, so a chunk of one stream can come before an earlier write to the
other.  Each time a chunk comes, both pipes are first read until each is empty (``drain``: the
child's ``drain_output``, non-blocking, telling when it finds a pipe empty or ended): what a
stream writes after its pipe was found empty has a time no earlier than anything read by then
(the runtime's clock never goes back, and moves on when the fd changes), so every piece earlier
than what the other stream can still bring goes out, sorted by fake time (``Merger``).  Nothing
waits for the run's end: a program that writes to one stream has each write sent as it is read.
"""

from __future__ import annotations

from collections.abc import Callable

from sandboxd.golang.playback import Merger

# Sends (stream, data, fields) as an output event; returns how much of data fit the output limit.
Deliver = Callable[[str, bytes, dict[str, int]], int]
# Told (stream, ended) when a read finds that stream's pipe empty (or at its end).
Empty = Callable[[str, bool], None]


class FakeClock:
    """A faketime run's output sink (``OutputSink``: ``(stream, data, timestamp) -> taken``).

    ``limit`` bounds the bytes read from the program, record headers included (as go.dev/play
    bounds its output): a program writing empty records would otherwise make the daemon
    decode headers for as long as it runs, none of them counted.  The text sent is bounded by
    the same limit in ``deliver``."""

    def __init__(self, deliver: Deliver, drain: Callable[[Empty], None], limit: int) -> None:
        self.deliver = deliver
        self.drain = drain
        self.limit = limit
        self.read_bytes = 0
        self.merger = Merger()
        self._draining = False
        self._over = False  # more was read than ``limit``: the child is stopped
        self._full = False  # ``deliver`` took less than given: nothing more is sent

    def __call__(self, stream: str, data: bytes, timestamp: str) -> int:
        if self._over or self._full:
            return 0
        room = self.limit - self.read_bytes
        if len(data) > room:
            data = data[:max(0, room)]
            self._over = True  # the child stops (fewer taken than given); what fit goes out
        self.read_bytes += len(data)
        self.merger.feed(stream, data)
        if self._draining:  # a chunk read by the drain below: sent with the rest
            return 0 if self._over else len(data)
        self._draining = True
        try:
            self.drain(self.merger.empty)
        finally:
            self._draining = False
        self._send()
        return 0 if self._over or self._full else len(data)

    def end(self) -> None:
        """The run ended (its pipes are closed): what is left goes out."""
        self.merger.flush(cut=self._over)
        self._send()
        self.merger.drop()

    @property
    def fields(self) -> dict[str, int]:
        """An event's fields at the latest fake time, no delay (the output's last bytes)."""
        return {"delay_ms": 0, "fake_time_ns": self.merger.last_ns}

    def _send(self) -> None:
        for piece, _delay_ns, delay_ms in self.merger.take():
            if self._full:
                return
            fields = {"delay_ms": delay_ms, "fake_time_ns": piece.time_ns}
            if self.deliver(piece.stream, piece.data, fields) < len(piece.data):
                self._full = True
