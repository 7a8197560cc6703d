"""The Go Playground's fake clock, read back: a program built with ``-tags=faketime`` (the Go
runtime's ``runtime/time_fake.go``) writes each write to fd 1 or 2 as a playback record::

    b"\\x00\\x00PB"  8 bytes: the fake time, Unix nanoseconds, big-endian
                    4 bytes: the length of the data that follows, big-endian
                    the data

Its clock starts at 2009-11-10 23:00:00 UTC (``EPOCH_NS``) and moves only when every goroutine
sleeps; the runtime makes the time strictly greater whenever the fd changes, so the two streams'
records merge back into the order they were written in.

``StreamDecoder`` reads one stream as it comes, in any split: as golang/playground's ``decode``
(play.go), bytes where a header should be are data at the stream's last time (a program may
write them with a raw system call), times never go back (a record earlier than the stream's last
is at the last), and a record's declared length is only counted down, never allocated: the data
goes on as it arrives, so a hostile length (up to 4 GiB) holds nothing.  ``Merger`` puts both
streams' decoded pieces back in time order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"\x00\x00PB"
HEADER = len(MAGIC) + 8 + 4
EPOCH_NS = 1_257_894_000 * 1_000_000_000  # 2009-11-10 23:00:00 UTC, as the runtime starts
_NS_PER_MS = 1_000_000


@dataclass
class Piece:
    """Data of one stream at one fake time (``time_ns``: Unix nanoseconds)."""

    stream: str
    time_ns: int
    data: bytes


class StreamDecoder:
    """One stream's playback records, decoded as the bytes come."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.last_ns = EPOCH_NS
        self._held = b""  # the start of a header, or of what may be one
        self._left = 0  # data bytes still owed to the current record

    def feed(self, data: bytes) -> list[Piece]:
        pieces: list[Piece] = []
        buf = self._held + data if self._held else data
        self._held = b""
        i, n = 0, len(buf)
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                self._add(pieces, self.last_ns, buf[i:i + take])
                self._left -= take
                i += take
                continue
            if buf.startswith(MAGIC, i):
                if n - i < HEADER:
                    self._held = buf[i:]
                    break
                at, length = struct.unpack_from(">qI", buf, i + len(MAGIC))
                self.last_ns = max(at, self.last_ns)
                self._left = length
                i += HEADER
                continue
            j = buf.find(MAGIC, i)
            if j < 0:
                # Not a header: data at the last time; keep a tail that may start one.
                j = _partial_magic_start(buf, i)
                self._held = buf[j:]
            self._add(pieces, self.last_ns, buf[i:j])
            i = j if j > i else n
            if self._held:
                break
        return pieces

    def flush(self, cut: bool = False) -> list[Piece]:
        """The end of the stream: a cut header is data, as it came; unless the daemon cut the
        stream itself (``cut``: its output limit), which leaves it out."""
        held, self._held = self._held, b""
        return [Piece(self.stream, self.last_ns, held)] if held and not cut else []

    def _add(self, pieces: list[Piece], at: int, data: bytes) -> None:
        if not data:
            return
        if pieces and pieces[-1].time_ns == at:
            pieces[-1].data += data
        else:
            pieces.append(Piece(self.stream, at, data))


def _partial_magic_start(buf: bytes, start: int) -> int:
    """Where a tail of ``buf`` that could be the start of ``MAGIC`` begins (else its end)."""
    for k in range(min(len(MAGIC) - 1, len(buf) - start), 0, -1):
        if MAGIC.startswith(buf[len(buf) - k:]):
            return len(buf) - k
    return len(buf)


class Merger:
    """Both streams' pieces, given back in fake-time order, each with its delay since the
    previous one.

    The two pipes are read one after the other while the program goes on writing, so a piece
    goes out only once no piece of the other stream can still come before it: each stream has
    a floor under the time of anything of it not read yet, raised when a read finds its pipe
    empty (``empty``: what comes later was written later, so no earlier than anything read by
    then) and by its own pieces (a stream's times never go back).  Past ``max_pending`` bytes
    held (a program that keeps both pipes full), pieces go out in the order known so far."""

    def __init__(self, max_pending: int = 1024 * 1024) -> None:
        self.decoders = {name: StreamDecoder(name) for name in ("stdout", "stderr")}
        self.max_pending = max_pending
        self._pending: list[Piece] = []
        self._pending_bytes = 0
        self._floor = {name: EPOCH_NS for name in self.decoders}
        self._high = EPOCH_NS  # the latest time of any piece read so far
        self.last_ns = EPOCH_NS  # the time of the latest piece given back

    def feed(self, stream: str, data: bytes) -> None:
        self._hold(self.decoders[stream].feed(data))

    def empty(self, stream: str, ended: bool = False) -> None:
        """``stream``'s pipe was found empty (or at its end) just now."""
        self._floor[stream] = _FOREVER if ended else max(self._floor[stream], self._high)

    def flush(self, cut: bool = False) -> None:
        """The run ended: every piece can go.  ``cut``: the daemon stopped reading at its
        output limit, so what the other stream wrote before a held piece may never have been
        read: only the pieces known to be in order go (the output is an exact prefix)."""
        for name, decoder in self.decoders.items():
            self._hold(decoder.flush(cut))
            if not cut:
                self._floor[name] = _FOREVER

    def drop(self) -> None:
        """Forget what is still held (after a ``cut`` flush and ``take``)."""
        self._pending, self._pending_bytes = [], 0

    def take(self) -> list[tuple[Piece, int, int]]:
        """The pieces that can go now, in time order, each with ``(delay_ns, delay_ms)``:
        ``delay_ns`` as the Playground's ``Delay`` (the time since the previous piece, never
        negative), ``delay_ms`` the whole fake milliseconds since the start that the piece's
        time adds (so the delays of a run add up to its fake time, cut to the millisecond)."""
        self._pending.sort(key=lambda piece: piece.time_ns)  # stable: one time keeps its order
        everything = self._pending_bytes > self.max_pending
        n = 0
        for piece in self._pending:
            other = "stderr" if piece.stream == "stdout" else "stdout"
            floor = max(self._floor[other], self.decoders[other].last_ns)
            if not everything and piece.time_ns > floor:
                break
            n += 1
        ready, self._pending = self._pending[:n], self._pending[n:]
        self._pending_bytes -= sum(len(piece.data) for piece in ready)
        out = []
        for piece in ready:
            at = max(piece.time_ns, self.last_ns)
            delay_ns = at - self.last_ns
            delay_ms = (at - EPOCH_NS) // _NS_PER_MS - (self.last_ns - EPOCH_NS) // _NS_PER_MS
            self.last_ns = piece.time_ns = at
            out.append((piece, delay_ns, delay_ms))
        return out

    def _hold(self, pieces: list[Piece]) -> None:
        for piece in pieces:
            self._high = max(self._high, piece.time_ns)
            self._pending_bytes += len(piece.data)
        self._pending += pieces


_FOREVER = 2**63
