"""``/v1``: the line protocol over HTTP.

``POST /v1/run`` (``/v1/fmt``, ``/v1/vet``): the body is one line-protocol request; the answer
(200, ``application/x-ndjson``, chunked) is that request's events, one per line, each written
the moment the job emits it, the final event last.  ``type`` may be left out (the path gives
it); a body whose ``type`` names another kind is refused.  The session may come in a
``Sandboxd-Session`` header or the path (``/v1/sessions/ID/run``), so a balancer can route
without reading the body; a body whose ``session_id`` disagrees is refused.  A client that goes
away cancels its request.  A body that is not a valid request: 400 with the ``bad_request``
final event the line protocol would send.  ``GET /v1/version``: the ``version`` answer.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet import interfaces
from twisted.logger import Logger
from twisted.web import resource, server
from zope.interface import implementer

from sandboxd.status import Status
from sandboxd.web.errors import refuse
from sandboxd.web.lines import client_for
from sandboxd.web.site import SESSION_HEADER, NotFound
from sandboxd.wire.connection import SHUTDOWN_NOT_STARTED
from sandboxd.wire.events import encode
from sandboxd.wire.request import BadRequest, Control, Request, parse_line

if TYPE_CHECKING:
    from sandboxd.jobs.submit import Handle
    from sandboxd.wire.connection import ConnectionFactory

log = Logger()

KINDS = ("run", "fmt", "vet")
NDJSON = b"application/x-ndjson; charset=utf-8"


def parse_body(factory: ConnectionFactory, body: bytes, kind: str,
               session: str | None) -> Request:
    """The request a POST body holds, checked as the line protocol checks a line, with the
    path's ``type`` and the header's or path's session filled in when the body has none."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        obj = None  # parse_line says what is wrong with it
    inject: dict[str, Any] = {}
    if isinstance(obj, dict):
        if "type" not in obj:
            inject["type"] = kind
        if session is not None and kind == "run" and "session_id" not in obj:
            inject["session_id"] = session
    if inject:  # spliced in, so that parse_line still sees the body exactly as sent
        text = body.strip()
        members = json.dumps(inject, ensure_ascii=False)[1:-1].encode()
        body = b"{" + members + (b"," if obj else b"") + text[1:]
    runtime = factory.runtime
    parsed = parse_line(body, factory.policy, factory.sources,
                        runtime.toolchains if runtime is not None else ())
    if isinstance(parsed, Control):
        raise BadRequest(f"a {parsed.type!r} line acts on a request of the same connection: "
                         "send it over the WebSocket /v1/ws", parsed.target)
    if parsed.type != kind:
        raise BadRequest(f"this is /v1/{kind}; the body's type is {parsed.type!r} "
                         f"(POST it to /v1/{parsed.type})", parsed.id)
    if session is not None and kind == "run" and parsed.session_id != session:
        raise BadRequest(f"the body's session_id {parsed.session_id!r} disagrees with the "
                         f"session {session!r} of the header or path", parsed.id)
    return parsed


@implementer(interfaces.IPushProducer)
class _JobProducer:
    """The HTTP connection asks the job to hold its output while the client reads slowly."""

    def __init__(self, handle: Handle) -> None:
        self.handle = handle

    def pauseProducing(self) -> None:
        self.handle.pause()

    def resumeProducing(self) -> None:
        self.handle.resume()

    def stopProducing(self) -> None:
        self.handle.cancel("the client disconnected")


class Stream(resource.Resource):
    """``POST /v1/KIND`` (and ``/v1/sessions/ID/KIND``)."""

    isLeaf = True

    def __init__(self, factory: ConnectionFactory, kind: str, session: str | None = None) -> None:
        super().__init__()
        self.factory = factory
        self.kind = kind
        self.session = session

    def render_GET(self, request: Any) -> bytes:
        return refuse(request, 405, f"/v1/{self.kind} takes POST with a request as its body")

    def render_POST(self, request: Any) -> Any:
        header = request.getHeader(SESSION_HEADER)
        header = header.decode("utf-8", "replace") if header is not None else None
        if header is not None and self.session is not None and header != self.session:
            return refuse(request, 400, f"the Sandboxd-Session header {header!r} disagrees "
                          f"with the path's session {self.session!r}")
        session = self.session if self.session is not None else header
        try:
            req = parse_body(self.factory, request.content.read(), self.kind, session)
        except BadRequest as e:
            return refuse(request, 400, e.message, request_id=e.request_id, **e.fields)
        if self.factory.shutting_down:
            return refuse(request, 503, SHUTDOWN_NOT_STARTED, Status.CANCELLED, req.id)
        request.setHeader(b"content-type", NDJSON)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx: pass each line on at once
        run_streamed(self.factory, req, request)
        return server.NOT_DONE_YET


def channel_client(factory: ConnectionFactory, request: Any) -> str:
    """The client an HTTP request counts as: its connection's, asked once per connection."""
    channel = request.channel
    client = getattr(channel, "sandboxd_client", None)
    if client is None:
        client = channel.sandboxd_client = client_for(factory, channel.transport)
    return client


def run_streamed(factory: ConnectionFactory, req: Request, request: Any) -> None:
    """Run ``req``, writing each of its events to ``request`` as one line."""
    gone = False

    def emit(event: dict[str, Any]) -> None:
        if not gone:
            request.write(encode(event))

    handle = factory.requests.submit(req, emit, channel_client(factory, request))

    def disconnected(failure: Any) -> None:
        nonlocal gone
        gone = True
        handle.cancel("the client disconnected")

    def done(result: Any) -> None:
        if not gone:
            request.unregisterProducer()
            request.finish()
        if not isinstance(result, type(None)):
            log.failure("a streamed request", result)

    request.notifyFinish().addErrback(disconnected)
    request.write(b"")  # the status and headers now: the client knows it was accepted
    request.registerProducer(_JobProducer(handle), True)
    handle.start().addBoth(done)


class Version(resource.Resource):
    isLeaf = True

    def __init__(self, factory: ConnectionFactory) -> None:
        super().__init__()
        self.factory = factory

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", NDJSON)
        return encode(self.factory.requests.version_event(None))

    def render_POST(self, request: Any) -> bytes:
        try:
            req = parse_body(self.factory, request.content.read(), "version", None)
        except BadRequest as e:
            return refuse(request, 400, e.message, request_id=e.request_id, **e.fields)
        request.setHeader(b"content-type", NDJSON)
        return encode(self.factory.requests.version_event(req.id))


class Sessions(resource.Resource):
    """``/v1/sessions/ID/KIND``: the session in the path, for balancers that route by path."""

    def __init__(self, factory: ConnectionFactory) -> None:
        super().__init__()
        self.factory = factory

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        rest = request.postpath
        if len(rest) != 1 or rest[0].decode("latin-1") not in KINDS:
            return NotFound()
        request.prepath.append(rest.pop(0))
        try:
            session = path.decode("utf-8")
        except UnicodeDecodeError:
            return NotFound()
        return Stream(self.factory, request.prepath[-1].decode(), session)


class V1(resource.Resource):
    def __init__(self, factory: ConnectionFactory, websocket: resource.Resource) -> None:
        super().__init__()
        for kind in KINDS:
            self.putChild(kind.encode(), Stream(factory, kind))
        self.putChild(b"version", Version(factory))
        self.putChild(b"sessions", Sessions(factory))
        self.putChild(b"ws", websocket)

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return NotFound()

