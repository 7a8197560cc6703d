"""The site behind ``--http``: routing, and the checks every request passes before any of it.

A web server on loopback is reachable from every page the user's browser opens, so:

- ``Host`` must be an IP address, ``localhost`` (or a name under it), or a name the operator
  gave with ``--http-host``: a page of another site whose DNS name was re-pointed at this
  address (DNS rebinding) sends its own name and is refused (421).
- A request that carries an ``Origin`` (browsers send it on every cross-origin request that
  could change something, and on every WebSocket) must come from this very site or from an
  origin the operator allowed with ``--http-origin``; else 403.  Allowed ones get CORS headers
  and preflights answered.
- Bodies are bounded (``--max-line-bytes``): a declared length over it is refused with 413 at
  once, before the body is read; a chunked body is cut off with 413 as it passes the bound.
- Open HTTP connections are bounded (``--max-connections``, counted apart from the line
  protocol's): at the bound the one idle the longest is closed, and when none is idle the new
  connection is refused.
"""

from __future__ import annotations

import io
import ipaddress
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.logger import Logger
from twisted.web import resource, server, static

from sandboxd.status import Phase, Status
from sandboxd.web.errors import refuse
from sandboxd.wire.events import encode, final_event

if TYPE_CHECKING:
    from sandboxd.wire.connection import ConnectionFactory

log = Logger()

STATIC_DIR = Path(__file__).resolve().parent / "static"
SESSION_HEADER = b"sandboxd-session"
LINGER_S = 2.0  # after a 413: how long the rest of a refused body is read and dropped
# The page and its files: only this site's own scripts, styles and connections.
PAGE_HEADERS = {
    b"content-security-policy": (b"default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}


@dataclass
class WebSettings:
    origins: list[str] = field(default_factory=list)  # --http-origin; "*" allows any
    hosts: list[str] = field(default_factory=list)  # --http-host
    max_body_bytes: int = 2 * 1024 * 1024
    max_connections: int = 4096
    idle_timeout: float | None = 600


def host_allowed(host_header: str, extra: list[str]) -> bool:
    """Whether a ``Host`` header names this server in a way DNS rebinding cannot forge."""
    host = host_header.strip().lower()
    if host.startswith("["):  # [v6]:port
        name = host[1:host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if name == "localhost" or name.endswith(".localhost"):
        return True
    return name in {h.lower().rstrip(".") for h in extra}


class WebRequest(server.Request):
    """A request whose body is bounded, and whose Host and Origin are checked first."""

    _received = 0
    _refused = False
    gone = False  # the client went away before the answer was finished

    def connectionLost(self, reason: Any) -> None:
        self.gone = True
        super().connectionLost(reason)

    def gotLength(self, length: int | None) -> None:
        limit = self.channel.site.settings.max_body_bytes
        if length is not None and length > limit:
            self.content = io.BytesIO()  # stays empty: the body is dropped as it comes
            self._too_big(limit)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        limit = self.channel.site.settings.max_body_bytes
        if self._received > limit:
            self._too_big(limit)
            return
        super().handleContentChunk(data)

    def _too_big(self, limit: int) -> None:
        """Answer 413 at once and close: the rest of the body is never read."""
        self._refused = True
        body = encode(final_event(
            None, Status.BAD_REQUEST,
            f"the request body is longer than this server's maximum ({limit} bytes)",
            Phase.QUEUE))
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 413 Content Too Large\r\n"
                        b"content-type: application/json; charset=utf-8\r\n"
                        b"connection: close\r\n"
                        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        # A lingering close: stop writing, but take (and drop) what the client still sends
        # for a moment, so that closing with its bytes unread (a reset) does not destroy the
        # answer before the client has read it.
        try:
            transport.loseWriteConnection()
        except Exception:
            transport.loseConnection()
        else:
            from twisted.internet import reactor

            reactor.callLater(LINGER_S, transport.abortConnection)

    def process(self) -> None:
        if self._refused:
            return
        problem = self._check()
        if problem is not None:
            code, message = problem
            body = refuse(self, code, message)
            self.setHeader(b"content-length", str(len(body)).encode())
            self.write(body)
            self.finish()
            return
        super().process()

    def render(self, resrc: resource.Resource) -> None:
        super().render(_JsonErrors(resrc))

    def processingFailed(self, reason: Any) -> None:
        """A bug in a resource: logged; the client gets a JSON 500, never a traceback."""
        log.failure("an HTTP request to {path}", reason, path=self.path)
        if self.finished or self.gone:
            return
        body = refuse(self, 500, "internal error: the server failed to answer this request",
                      Status.INTERNAL_ERROR)
        if not self.startedWriting:
            self.setHeader(b"content-length", str(len(body)).encode())
        self.write(body)
        self.finish()

    def _check(self) -> tuple[int, str] | None:
        settings = self.channel.site.settings
        host = self.header("host")
        if host is not None and not host_allowed(host, settings.hosts):
            return 421, (f"this server does not answer for Host {host!r} (an IP address, "
                         "localhost, or a name given with --http-host)")
        origin = self.header("origin")
        if origin is None:
            return None
        if self.same_origin(origin, host):
            return None
        if "*" in settings.origins or origin in settings.origins:
            self.setHeader(b"access-control-allow-origin", origin.encode())
            self.setHeader(b"vary", b"Origin")
            return None
        return 403, (f"cross-origin requests from {origin!r} are refused (the operator allows "
                     "origins with --http-origin)")

    def same_origin(self, origin: str, host: str | None) -> bool:
        scheme = "https" if self.isSecure() else "http"
        parts = urlsplit(origin)
        if host is None or parts.scheme != scheme:
            return False
        return parts.netloc.lower() == host.strip().lower()

    def header(self, name: str) -> str | None:
        value = self.getHeader(name.encode())
        return value.decode("latin-1") if value is not None else None


class _JsonErrors(resource.Resource):
    """A resource's answer, with a method it does not take refused in JSON (405)."""

    isLeaf = True

    def __init__(self, wrapped: resource.Resource) -> None:
        super().__init__()
        self.wrapped = wrapped

    def render(self, request: Any) -> Any:
        try:
            return self.wrapped.render(request)
        except resource.UnsupportedMethod as e:
            allowed = [m.decode() for m in e.allowedMethods if m != b"HEAD"]
            request.setHeader(b"allow", ", ".join(allowed).encode())
            return refuse(request, 405, f"{request.method.decode('latin-1')} is not allowed "
                          f"here (allowed: {', '.join(allowed)})")


class WebSite(server.Site):
    """A ``Site`` that counts its connections and bounds them."""

    requestFactory = WebRequest

    def __init__(self, root: resource.Resource, settings: WebSettings, reactor: Any = None) -> None:
        kwargs = {"reactor": reactor} if reactor is not None else {}
        super().__init__(root, timeout=settings.idle_timeout, **kwargs)
        self.settings = settings
        self.open: dict[Any, float] = {}  # channel -> when it last started a request

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.open) >= self.settings.max_connections and not self._shed_idle():
            log.info("{n} HTTP connections open: refusing a new one", n=len(self.open))
            return None
        channel = super().buildProtocol(addr)
        self.open[channel] = time.monotonic()
        lost = channel.connectionLost

        def connection_lost(reason: Any) -> None:
            self.open.pop(channel, None)
            lost(reason)

        channel.connectionLost = connection_lost
        return channel

    def _shed_idle(self) -> bool:
        idle = [c for c in self.open if not _busy(c)]
        if not idle:
            return False
        victim = min(idle, key=lambda c: self.open[c])
        log.info("{n} HTTP connections open: closing the one idle longest", n=len(self.open))
        self.open.pop(victim, None)
        transport = getattr(getattr(victim, "_channel", victim), "transport", None)
        if transport is not None:
            transport.abortConnection()
        return True


def _busy(channel: Any) -> bool:
    """An HTTP connection with a request in hand, or a WebSocket with requests running."""
    busy = getattr(channel, "busy", None)
    if busy is not None:
        return bool(busy)
    inner = getattr(channel, "_channel", channel)
    return bool(getattr(inner, "requests", None))


class Preflight(resource.Resource):
    """CORS preflight answers, for allowed origins (the site checked the origin first)."""

    isLeaf = True

    def render_OPTIONS(self, request: Any) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", b"GET, POST, OPTIONS")
        request.setHeader(b"access-control-allow-headers", b"content-type, sandboxd-session")
        request.setHeader(b"access-control-max-age", b"600")
        return b""


class NotFound(resource.Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return refuse(request, 404, f"no such resource: {request.path.decode('latin-1')!r}")


class Page(resource.Resource):
    """A static file with the page's security headers."""

    isLeaf = True

    def __init__(self, path: Path, content_type: bytes) -> None:
        super().__init__()
        self.data = path.read_bytes()
        self.content_type = content_type

    def render_GET(self, request: Any) -> bytes:
        for name, value in PAGE_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        return self.data


class StaticFiles(static.File):
    childNotFound = None  # set below: JSON, not Twisted's HTML page
    indexNames: list[str] = []  # /static/ is no page
    def render_GET(self, request: Any) -> Any:
        for name, value in PAGE_HEADERS.items():
            request.setHeader(name, value)
        return super().render_GET(request)

    def directoryListing(self) -> resource.Resource:
        return NotFound()


class Root(resource.Resource):
    def __init__(self, children: dict[bytes, resource.Resource]) -> None:
        super().__init__()
        self.children_by_name = children
        self.index = Page(STATIC_DIR / "index.html", b"text/html; charset=utf-8")

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        if request.method == b"OPTIONS":
            return Preflight()
        if path == b"":
            return self.index
        return self.children_by_name.get(path) or NotFound()


def make_site(factory: ConnectionFactory, settings: WebSettings, reactor: Any = None) -> WebSite:
    """The site for every ``--http`` listener; requests go through ``factory.requests``."""
    from sandboxd.web.lines import websocket_resource
    from sandboxd.web.play import play_resources
    from sandboxd.web.stream import V1

    StaticFiles.childNotFound = NotFound()
    static_files = StaticFiles(str(STATIC_DIR))
    static_files.contentTypes.update({".js": "text/javascript; charset=utf-8",
                                      ".css": "text/css; charset=utf-8"})
    v1 = V1(factory, websocket_resource(factory, settings))
    play = play_resources(factory)
    under = resource.Resource()  # go.dev's own front end posts to /_/compile, /_/fmt, …
    for name, child in play.items():
        under.putChild(name, child)
    children: dict[bytes, resource.Resource] = {b"static": static_files, b"v1": v1, b"_": under,
                                                **play}
    return WebSite(Root(children), settings, reactor)
