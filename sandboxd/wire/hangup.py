"""After a client's end of input: has it half-closed (its answers still to come) or gone away
(its requests to cancel)?  One small owner per connection, ``HangupWatch``."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

# After the client's end-of-input: how often to look whether it has gone altogether.
HANGUP_POLL_S = 0.2
# After a TCP client's end of input, at most this long without a write: then a probe.  Longer
# than a typical program's pause between lines (the README's sample: 1 s), so a client that
# reads its answers sees nothing extra; a client that closed is found within about this long.
PROBE_S = 1.5
PROBE = b" "


class HangupWatch:
    """End of input is a half-close or a client that went away; only the second cancels.

    A Unix socket whose peer closed (or a TCP socket that got a reset) polls as HUP/ERR, while
    a half-closed one does not, so look at ``start(clock)`` and every ``HANGUP_POLL_S`` while
    ``needed()`` holds; ``hang_up()`` once the peer is gone.  (A TCP peer that closed shows only
    once a write to it fails: see ``_probe``.)  ``wrote()`` is told of every write.
    """

    def __init__(self, transport: Any, needed: Callable[[], bool],
                 hang_up: Callable[[], None]) -> None:
        self.transport = transport
        self.needed = needed
        self.hang_up = hang_up
        self.last_write = 0.0
        self._loop: LoopingCall | None = None

    def wrote(self) -> None:
        self.last_write = time.monotonic()

    def start(self, clock: Any) -> None:
        gone = self._peer_gone()
        if gone is None:
            return  # not a socket we can look at
        if gone:
            self.hang_up()
            return
        self._loop = LoopingCall(self._check)
        if clock is not None:  # else the global reactor
            self._loop.clock = clock
        self._loop.start(HANGUP_POLL_S, now=False).addErrback(
            lambda f: log.failure("watching for a hang-up", f))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        if not self.needed():
            self.stop()
            return
        if self._peer_gone():
            self.hang_up()
            return
        self._probe()

    def _probe(self) -> None:
        """A TCP peer that closed looks half-closed until something is written to it: then it
        answers with a reset, which the next look sees.  So while requests run after the
        client's end of input and nothing has been written for ``PROBE_S``, write one space.
        Every event is written as a whole line, so the space starts the next line: JSON
        allows whitespace before a value, the line is still one JSON object, and a client
        has nothing to skip (an empty output event did this before: 5 or 6 of them among
        the README sample's 4 events).  A program's own output probes as well."""
        now = time.monotonic()
        if now - self.last_write < PROBE_S or not self._is_tcp():
            return
        self.last_write = now
        self.transport.write(PROBE)

    def _sockets(self) -> list[Any]:
        # Through a TLS layer too: its socket is the transport's transport.
        return [self.transport, getattr(self.transport, "transport", None)]

    def _is_tcp(self) -> bool:
        for transport in self._sockets():
            try:
                family = transport.getHandle().family
            except Exception:
                continue
            return family in (socket.AF_INET, socket.AF_INET6)
        return False

    def _peer_gone(self) -> bool | None:
        for transport in self._sockets():
            try:
                fd = transport.getHandle().fileno()
            except Exception:
                continue
            poller = select.poll()
            poller.register(fd, select.POLLHUP | select.POLLERR)
            return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))
        return None
