"""TLS whose ``close_notify`` is a half-close, as TLS 1.3 defines it.

Twisted's TLS layer answers a client's ``close_notify`` with its own and closes the whole
connection at once, so a client that sends it at the end of its input (``socat -
OPENSSL:…`` does) loses every answer still to come: its requests are cancelled.  RFC 8446
§6.1 makes ``close_notify`` close only the sender's writing side ("Each party MUST send a
close_notify alert before closing its write side of the connection"; the old TLS 1.2 duty to
answer at once and discard pending writes is dropped because it truncates the read side).
So here a ``close_notify`` is delivered to a half-closeable protocol as
``readConnectionLost`` — what a TCP ``shutdown(SHUT_WR)`` is — and the server's own
``close_notify`` goes out when the protocol closes the connection, after its last answer.
OpenSSL keeps writing after it has received a ``close_notify`` (TLS 1.2 too: it refuses
writes only after *sending* one), so the same holds on a TLS 1.2 connection.

A TCP end of file *without* a ``close_notify`` before it is a truncated TLS stream, not an
end of input: the connection is dropped, as Twisted does.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet import interfaces
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol, _PullToPush
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(interfaces.IHalfCloseableProtocol)
class HalfCloseTLSProtocol(TLSMemoryBIOProtocol):
    _peer_closed_tls = False  # the client's close_notify has come

    def _flushReceiveBIO(self) -> None:
        # Twisted's loop (twisted.protocols.tls), but a close_notify from the peer is handed
        # on as readConnectionLost when the protocol is half-closeable.
        while not self._lostTLSConnection and not self._peer_closed_tls:
            try:
                data = self._tlsConnection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                if not interfaces.IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
                    self._shutdownTLS()  # Twisted's own answer: a whole close
                    self._tlsShutdownFinished(None)
                    continue
                self._peer_closed_tls = True
                self.wrappedProtocol.readConnectionLost()
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()

    def loseConnection(self) -> None:
        # Twisted's TLS holds a close back until a registered producer unregisters; TCP does
        # not wait for a streaming producer (sandboxd's connection is one, registered for
        # its whole life), so neither does this: the close_notify goes out after what was
        # written.
        super().loseConnection()
        producer = self._producer
        if (self.disconnecting and producer is not None
                and not isinstance(producer._producer, _PullToPush)):
            self.unregisterProducer()

    # IHalfCloseableProtocol, towards the TCP transport below.
    def readConnectionLost(self) -> None:
        if not self._peer_closed_tls:
            # End of file without close_notify: a truncated stream (or a client that just
            # stopped); not a clean end of input.
            self.transport.abortConnection()

    def writeConnectionLost(self) -> None:
        pass  # never asked for: TLS writes end with close_notify, then a whole close


class HalfCloseTLSFactory(TLSMemoryBIOFactory):
    protocol = HalfCloseTLSProtocol  # type: ignore[assignment]


class HalfCloseTLSReactor:
    """The reactor an ``ssl:`` endpoint is given (``serverFromString(HalfCloseTLSReactor(r),
    ...)``): its ``listenSSL`` — ``IReactorSSL``'s, which the endpoint calls with the port,
    interface, backlog and TLS options its string named — listens on TCP with
    ``HalfCloseTLSProtocol`` instead; ``prepare`` may adjust the TLS options' OpenSSL context
    first (client certificates).  Everything else is the real reactor's."""

    def __init__(self, reactor: Any, prepare: Any = None) -> None:
        self.reactor = reactor
        self.prepare = prepare

    def listenSSL(self, port: int, factory: Any, contextFactory: Any,
                  backlog: int = 50, interface: str = "") -> Any:
        if self.prepare is not None:
            self.prepare(contextFactory)
        return self.reactor.listenTCP(port, HalfCloseTLSFactory(contextFactory, False, factory),
                                      backlog, interface)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reactor, name)
