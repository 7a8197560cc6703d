"""A small Twisted API for talking to sandboxd: send requests, get their events and final event.

    client = yield connect(reactor, "unix:/run/sandboxd.sock")
    final = yield client.request({"code": src}, on_event=print)

``connect`` takes a Twisted client endpoint string (``unix:PATH``, ``tcp:HOST:PORT``,
``tls:HOST:PORT:trustRoots=DIR:certificate=PEM:privateKey=PEM``; ``tls:`` checks the server's
name with service-identity).  Every request gets an id unless it has one; events are routed to
the request they belong to, and ``request()`` fires with its final event.

Behind a balancer (deploy/haproxy/) a connection stays on the daemon its first request was
sent to, chosen by that request's ``session_id``.  So a request's ``session_id`` is always
sent first in its JSON (inside the bytes the balancer reads), and one connection carries at
most one session, named by its first request: a request of another session raises
``OneSessionPerConnection`` (connect again for it).  When the connection ends before a
request's final event — the daemon behind the balancer was killed, say — ``request()`` fails
with ``ConnectionClosed``, whose message says what that means.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import clientFromString
from twisted.protocols.basic import LineOnlyReceiver

EventHandler = Callable[[dict[str, Any]], None]
ENV_CONNECT = "SANDBOXD_CONNECT"
DEFAULT_CONNECT = "tcp:127.0.0.1:8080"


class ConnectionClosed(Exception):
    """The connection ended before the request's final event."""


class OneSessionPerConnection(ValueError):
    """A request of another session than the connection's: open a connection per session."""


_UNSET = object()


class _Pending:
    def __init__(self, on_event: EventHandler | None) -> None:
        self.on_event = on_event
        self.done: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.events = 0  # seen so far: did it start?


class SandboxdProtocol(LineOnlyReceiver):
    """One connection to sandboxd; events in, requests and control lines out."""

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024 * 1024
    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.pending: dict[str, _Pending] = {}
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.session: object = _UNSET  # the first request's session_id (None: anonymous)

    # -- requests --------------------------------------------------------------------------

    def request(
        self, request: dict[str, Any], on_event: EventHandler | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        """Send one request; fires with its final event, ``on_event`` sees every event.
        Raises ``OneSessionPerConnection`` for a session other than the connection's."""
        session = request.get("session_id")
        if self.session is _UNSET:
            self.session = session
        elif session is not None and session != self.session:
            raise OneSessionPerConnection(
                f"this connection carries {_which(self.session)}, not session {session!r}: "
                "behind a balancer a connection stays on the daemon its first request chose, "
                "so open a connection per session")
        # session_id first: a balancer reads only the first bytes of a connection.
        request = {"session_id": session, **request} if session is not None else dict(request)
        request_id = request.setdefault("id", f"c{next(self._ids)}")
        pending = _Pending(on_event)
        self.pending[request_id] = pending
        self._send(request)
        return pending.done

    def stdin(self, request_id: str, data: str = "", eof: bool = False) -> None:
        line: dict[str, Any] = {"type": "stdin", "id": request_id}
        if data:
            line["data"] = data
        if eof:
            line["eof"] = True
        self._send(line)

    def cancel(self, request_id: str) -> None:
        self._send({"type": "cancel", "id": request_id})

    def close(self) -> None:
        self.transport.loseConnection()

    def _send(self, obj: dict[str, Any]) -> None:
        self.sendLine(json.dumps(obj, ensure_ascii=False).encode("utf-8"))

    # -- events ----------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        request_id = event.get("id")
        if request_id is None and event.get("done"):
            target = event.get("for_id")
            if target in self.pending:
                # A stdin or cancel line was refused; the request itself goes on.
                handler = self.pending[target].on_event
                if handler is not None:
                    handler(event)
                return
            # A line the server could not tie to a request (too long, not JSON): none of
            # ours can still expect an answer for it, so tell every waiting request.
            for pending in list(self.pending.values()):
                if pending.on_event is not None:
                    pending.on_event(event)
            return
        pending = self.pending.get(request_id)
        if pending is None:
            return
        pending.events += 1
        if pending.on_event is not None:
            pending.on_event(event)
        if event.get("done"):
            del self.pending[request_id]
            pending.done.callback(event)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        pending, self.pending = self.pending, {}
        how = "was reset" if reason is not None and not reason.check(
            error.ConnectionDone) else "was closed"
        for request_id, p in pending.items():
            p.done.errback(ConnectionClosed(_lost(request_id, p.events, how)))
        self.closed.callback(None)


def _which(session: object) -> str:
    return "anonymous requests" if session is None else f"session {session!r}"


def _lost(request_id: str, events: int, how: str) -> str:
    """What a connection that ended under a running request means, in words."""
    if events:
        where = (f"{events} of its events had come, then no final event: the daemon running it "
                 "stopped without finishing it (killed or crashed)")
    else:
        where = ("no event of it had come: no daemon may have taken it (behind a balancer: "
                 "none could), or the one that did was killed")
    return (f"the connection to sandboxd {how} before request {request_id!r} ended; {where}, or "
            "something between (a balancer, the network) dropped the connection. Whether it "
            "ran is unknown; sending it again runs it again, and a session's files may be gone "
            "(its next request may start it anew: \"session_new\": true)")


class _Factory(protocol.Factory):
    protocol = SandboxdProtocol  # type: ignore[assignment]


def connect(reactor: Any, endpoint: str) -> defer.Deferred[SandboxdProtocol]:
    """Connect to sandboxd at a Twisted client endpoint string."""
    return clientFromString(reactor, endpoint).connect(_Factory())
