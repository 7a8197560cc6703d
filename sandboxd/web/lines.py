"""``/v1/ws``: the line protocol over WebSocket, one JSON object per message each way.

Each text (or binary) message is one line: requests run concurrently and their events
interleave, each carrying its ``id``; ``stdin`` and ``cancel`` act on the requests of the same
WebSocket, exactly as on a line connection.  When the socket closes, its requests are
cancelled.  While the client reads slowly, its requests' programs are paused.  The framing is
autobahn's; a message longer than ``--max-line-bytes`` is answered ``bad_request`` like
a long line; one longer than twice that closes the socket.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import interfaces
from twisted.logger import Logger
from zope.interface import implementer

from sandboxd.status import Phase, Status
from sandboxd.wire.connection import apply_control, triage
from sandboxd.wire.events import encode, final_event
from sandboxd.wire.identity import client_identity
from sandboxd.wire.request import Control, Request

if TYPE_CHECKING:
    from sandboxd.jobs.submit import Handle
    from sandboxd.web.site import WebSettings
    from sandboxd.wire.connection import ConnectionFactory

log = Logger()


def client_for(factory: ConnectionFactory, transport: Any) -> str:
    """Who a web connection's requests count as in the fair shares of the queue and the
    sessions, by the line connection's own rules (``Connection.client``): the verified client
    certificate, else the peer address with ``--client-identity=address``, else this
    connection alone (``http:N``)."""
    return client_identity(transport, getattr(factory, "client_identity", None) == "address",
                           lambda: f"http:{next(factory.serials)}")


class LineSession:
    """What one client's lines do, apart from how the lines travel: parse, answer ``version``,
    act on ``stdin``/``cancel``, submit the rest and keep them until their final event."""

    def __init__(self, factory: ConnectionFactory, send: Any, client: str | None = None) -> None:
        self.factory = factory
        node = getattr(factory.runtime, "node", None)

        def named(event: dict[str, Any]) -> None:  # refused lines too: which daemon answered
            if node is not None and event.get("done"):
                event.setdefault("node", node)
            send(event)

        self.send = named
        self.client = client
        self.jobs: dict[str, Handle] = {}
        self.paused = False

    def line(self, data: bytes) -> None:
        factory = self.factory
        if len(data) > factory.max_line_bytes:
            self.send(final_event(
                None, Status.BAD_REQUEST,
                f"the line is longer than this server's maximum ({factory.max_line_bytes} "
                "bytes); it was skipped", Phase.QUEUE))
            return
        request = triage(factory, data, self.jobs)
        if request is None:
            return
        if isinstance(request, dict):
            self.send(request)  # answered at once
        elif isinstance(request, Control):
            self.control(request)
        else:
            self.start(request)

    def start(self, request: Request) -> None:
        handle = self.factory.requests.submit(request, self.send, self.client)
        self.jobs[request.id] = handle
        if self.paused:
            handle.pause()
        handle.start().addBoth(self._done, request.id, handle)

    def _done(self, result: Any, request_id: str, handle: Handle) -> None:
        if self.jobs.get(request_id) is handle:
            del self.jobs[request_id]
        if result is not None:
            log.failure("a WebSocket request", result)

    def control(self, control: Control) -> None:
        refused = apply_control(self.jobs, control, self.factory.sources.max_stdin_bytes)
        if refused is not None:
            self.send(refused)

    def lost(self) -> None:
        for handle in list(self.jobs.values()):
            handle.cancel("the client disconnected")

    def pause(self) -> None:
        self.paused = True
        for handle in self.jobs.values():
            handle.pause()

    def resume(self) -> None:
        self.paused = False
        for handle in list(self.jobs.values()):
            handle.resume()


@implementer(interfaces.IPushProducer)
class _Producer:
    def __init__(self, lines: LineSession) -> None:
        self.lines = lines

    def pauseProducing(self) -> None:
        self.lines.pause()

    def resumeProducing(self) -> None:
        self.lines.resume()

    def stopProducing(self) -> None:
        self.lines.lost()


class LineSocket(WebSocketServerProtocol):
    lines: LineSession | None = None
    closed = False

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.factory.site
        if site is not None:  # counted with the site's connections from now on
            site.open[self] = time.monotonic()

    def connectionLost(self, reason: Any) -> None:
        site = self.factory.site
        if site is not None:
            site.open.pop(self, None)
        super().connectionLost(reason)

    @property
    def busy(self) -> bool:
        return bool(self.lines is not None and self.lines.jobs)

    def onOpen(self) -> None:
        factory = self.factory.lines_factory
        self.lines = LineSession(factory, self._send, client_for(factory, self.transport))
        try:  # the HTTP channel that handed the socket over was its producer
            self.transport.unregisterProducer()
        except Exception:
            pass
        try:
            self.transport.registerProducer(_Producer(self.lines), True)
        except Exception:
            log.failure("registering a WebSocket's producer")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.lines is not None:
            self.lines.line(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = True
        if self.lines is not None:
            self.lines.lost()

    def _send(self, event: dict[str, Any]) -> None:
        if not self.closed:
            # The line protocol's one encoder (control characters escaped), without its "\n".
            self.sendMessage(encode(event)[:-1])


class _Upgrade(WebSocketResource):
    """Hands the HTTP connection over to a ``LineSocket``, which the site counts instead."""

    def render(self, request: Any) -> Any:
        site = request.channel.site
        for channel in list(site.open):
            if getattr(channel, "_channel", channel) is request.channel:
                site.open.pop(channel)
        self._factory.site = site
        return super().render(request)


def websocket_resource(factory: ConnectionFactory, settings: WebSettings) -> WebSocketResource:
    ws_factory = WebSocketServerFactory()
    ws_factory.protocol = LineSocket
    ws_factory.lines_factory = factory
    ws_factory.site = None
    # The site checked Host and Origin before the upgrade reached this resource.
    ws_factory.setProtocolOptions(
        # Up to twice a line's bound a message is read and refused as a line would be; past
        # that the socket is closed before more is held.
        maxMessagePayloadSize=2 * settings.max_body_bytes,
        maxFramePayloadSize=2 * settings.max_body_bytes,
        autoPingInterval=30, autoPingTimeout=30,
    )
    return _Upgrade(ws_factory)
