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
import os
import re
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import clientFromString
from twisted.protocols.basic import LineOnlyReceiver

EventHandler = Callable[[dict[str, Any]], None]
ENV_CONNECT = "SANDBOXD_CONNECT"
DEFAULT_CONNECT = "tcp:127.0.0.1:8080"


class SandboxdError(Exception):
    """A failure to talk to sandboxd; the message names the cause and what to try."""


class ConnectError(SandboxdError):
    """No connection: the address is wrong, nothing listens there, or the endpoint string
    (its certificate files) cannot be used."""


class ConnectionClosed(SandboxdError):
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
        self.endpoint = ""  # the endpoint string connected to, for messages
        self.answered = False  # any line came from the server

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
        self.answered = True
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
        if pending:
            e = getattr(reason, "value", None)
            why = closed_because(self.endpoint, e, self.answered)
            how = "was closed" if e is None or isinstance(e, error.ConnectionDone) else "was reset"
            for request_id, p in pending.items():
                # Once the server had answered, a connection that ends under a request is a
                # daemon (or something between) that went away: say what that means.
                lost = self.answered and why == _BASE.format(self.endpoint)
                p.done.errback(ConnectionClosed(
                    _lost(self.endpoint, request_id, p.events, how) if lost else why))
        self.closed.callback(None)


def _which(session: object) -> str:
    return "anonymous requests" if session is None else f"session {session!r}"


_BASE = "the connection to sandboxd at {} ended"


def _lost(endpoint: str, request_id: str, events: int, how: str) -> str:
    """What a connection that ended under a running request means, in words."""
    if events:
        where = (f"{events} of its events had come, then no final event: the daemon running it "
                 "stopped without finishing it (killed or crashed)")
    else:
        where = ("no event of it had come: no daemon may have taken it (behind a balancer: "
                 "none could), or the one that did was killed")
    at = f" at {endpoint}" if endpoint else ""
    return (f"the connection to sandboxd{at} {how} before request {request_id!r} ended; "
            f"{where}, or something between (a balancer, the network) dropped the connection. "
            "Whether it ran is unknown; sending it again runs it again, and a session's files "
            "may be gone (its next request may start it anew: \"session_new\": true)")


class _Factory(protocol.Factory):
    protocol = SandboxdProtocol  # type: ignore[assignment]

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def buildProtocol(self, addr: Any) -> SandboxdProtocol:
        proto = SandboxdProtocol()
        proto.factory = self
        proto.endpoint = self.endpoint
        return proto


def connect(reactor: Any, endpoint: str) -> defer.Deferred[SandboxdProtocol]:
    """Connect to sandboxd at a Twisted client endpoint string; fails with ConnectError,
    whose message names the address and the cause."""
    try:
        client = clientFromString(reactor, endpoint)
    except Exception as e:
        return defer.fail(ConnectError(_unusable(endpoint, e)))
    d = client.connect(_Factory(endpoint))

    def failed(failure: Any) -> Any:
        if failure.check(defer.CancelledError):
            return failure
        raise ConnectError(_refused(endpoint, failure.value))

    return d.addErrback(failed)


def _args(endpoint: str) -> dict[str, str]:
    """``kind:a:b=c`` → {'': kind, 'b': 'c', ...}: enough to name a certificate file."""
    out: dict[str, str] = {}
    for i, part in enumerate(re.split(r"(?<!\\):", endpoint)):
        key, sep, value = part.partition("=")
        if i == 0:
            out[""] = part
        elif sep:
            out[key] = value.replace("\\:", ":")
    return out


def _unusable(endpoint: str, e: Exception) -> str:
    """An endpoint string that cannot even be made into an endpoint."""
    args = _args(endpoint)
    roots = args.get("trustRoots")
    if roots is not None and not os.path.isdir(roots):
        what = "is a file" if os.path.isfile(roots) else "does not exist"
        return (f"--connect {endpoint}: trustRoots={roots} {what}; it must be a directory "
                "holding the CA certificate(s) as PEM files (mkdir cas && cp ca.pem cas/, "
                "then trustRoots=cas)")
    for key in ("certificate", "privateKey"):
        path = args.get(key)
        if path is not None and not os.path.isfile(path):
            return f"--connect {endpoint}: {key}={path} is not a readable file"
    text = str(e) or type(e).__name__
    if text.startswith("Unknown endpoint type"):
        text += " (unix:PATH, tcp:HOST:PORT or tls:HOST:PORT:trustRoots=DIR)"
    return f"--connect {endpoint}: {text}"


def _refused(endpoint: str, e: BaseException) -> str:
    """No connection was made: say where, and what to check."""
    why = getattr(e, "osError", None) or e
    if isinstance(e, error.ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(e, error.DNSLookupError):
        text = "no such host"
    elif isinstance(e, error.TimeoutError):
        text = "timed out"
    elif isinstance(why, int):  # a Unix socket: the errno alone
        text = os.strerror(why).lower()
    else:
        text = str(why).strip().rstrip(".") or type(e).__name__
        text = text.replace("An error occurred while connecting: ", "")
    return (f"cannot connect to sandboxd at {endpoint}: {text} (is sandboxd running and "
            f"listening there? the address comes from --connect or ${ENV_CONNECT})")


def closed_because(endpoint: str, e: BaseException | None, answered: bool) -> str:
    """Why the connection ended before an answer: for TLS, which certificate and which
    check failed, and what to try."""
    args = _args(endpoint)
    tls = args.get("") == "tls"
    base = _BASE.format(endpoint)
    if e is not None and type(e).__name__ == "VerificationError":
        host = endpoint.split(":")[1] if ":" in endpoint else "?"
        return (f"{base}: the server's certificate is not for {host} ({e}); connect with "
                "the name the certificate was made for")
    ssl = _ssl_reasons(e)
    if ssl:
        if "certificate verify failed" in ssl:
            return (f"{base}: the server's certificate was not accepted (TLS: certificate "
                    f"verify failed): it is not signed by a CA in trustRoots="
                    f"{args.get('trustRoots', '(none given: the system CAs)')}")
        if "certificate required" in ssl or ("handshake failure" in ssl and (
                "certificate" not in args)):
            return (f"{base}: the server requires a client certificate (TLS: {ssl}); add "
                    ":certificate=client.pem:privateKey=client.key to --connect")
        if "unknown ca" in ssl or "bad certificate" in ssl or "certificate unknown" in ssl:
            return (f"{base}: the server refused our client certificate "
                    f"certificate={args.get('certificate', '?')} (TLS: {ssl}): it is not "
                    "signed by the CA the server trusts (its --client-ca)")
        if any(m in ssl for m in ("wrong version number", "record layer failure",
                                  "packet length too long", "unexpected eof")):
            return (f"{base}: the server did not answer TLS (TLS: {ssl}); is it a plain "
                    "port? Try tcp: instead of tls:")
        return f"{base}: TLS failed ({ssl})"
    if tls and not answered:
        return f"{base} before any answer (TLS); the server's log may say why"
    if not answered:
        return (f"{base} before any answer; if that port speaks TLS, connect with "
                "tls:HOST:PORT:trustRoots=DIR")
    return base


def _ssl_reasons(e: BaseException | None) -> str:
    """The reason strings of an OpenSSL error, joined; '' when ``e`` is not one."""
    if e is None or type(e).__module__ != "OpenSSL.SSL":
        return ""
    parts = []
    for item in (e.args[0] if e.args and isinstance(e.args[0], list) else []):
        if isinstance(item, tuple) and item:
            parts.append(str(item[-1]))
    return "; ".join(parts) or str(e) or type(e).__name__
