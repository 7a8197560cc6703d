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
    """A faketime run's output sink (``OutputSink``: ``(stream, data, timestamp) -> taken``)."""

    def __init__(self, deliver: Deliver, drain: Callable[[Empty], None]) -> None:
        self.deliver = deliver
        self.drain = drain
        self.merger = Merger()
        self._draining = False
        self._full = False

    def __call__(self, stream: str, data: bytes, timestamp: str) -> int:
        if self._full:
            return 0
        self.merger.feed(stream, data)
        if self._draining:  # a chunk read by the drain below: sent with the rest
            return len(data)
        self._draining = True
        try:
            self.drain(self.merger.empty)
        finally:
            self._draining = False
        self._send()
        return 0 if self._full else len(data)

    def end(self) -> None:
        """The run ended (its pipes are closed): what is left goes out."""
        self.merger.flush()
        self._send()

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
