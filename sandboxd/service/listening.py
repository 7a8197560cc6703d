"""Listeners as services that say plainly when they cannot listen.

Twisted's ``StreamServerEndpointService`` only logs a failed ``listen()`` (a port in use, a
socket path in a missing directory), or raises it as a traceback when told to through a private
attribute.  Here a listener listens through the endpoint's public ``listen()``: endpoints that
answer at once (``tcp:``, ``ssl:``, ``unix:``, ``systemd:``) are listened on while the service
is made, before twistd starts logging, so a failure is one line on stderr and exit status 1;
the others (``onion:``, which waits for tor) when the service starts, and their failure ends
the daemon (see ``SandboxDaemon._listening``).
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.application import service
from twisted.internet import defer, error
from twisted.python.failure import Failure

from sandboxd.service.listeners import ListenerError

AT_ONCE = ("tcp:", "tcp6:", "ssl:", "unix:", "systemd:")

HINTS = {
    errno.EADDRINUSE: "is another sandboxd, or another program, listening there?",
    errno.EACCES: "not allowed (a port below 1024 needs root)",
    errno.EADDRNOTAVAIL: "this host has no such address",
    errno.ENOENT: "a directory on the path does not exist",
}


class Listener(service.Service):
    """One ``--listen`` (or ``--metrics``) endpoint with its factory."""

    def __init__(self, endpoint: Any, factory: Any, description: str) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.port: Any = None
        self.waiting: defer.Deferred[Any] | None = None  # an endpoint that answers later

    def listen_now(self) -> None:
        """Listen at once where the endpoint answers at once; ListenerError when it fails."""
        if not self.description.startswith(AT_ONCE):
            return
        result: list[Any] = []
        self.endpoint.listen(self.factory).addBoth(result.append)
        if not result:  # it did not answer at once after all: wait for it when started
            return
        if isinstance(result[0], Failure):
            raise ListenerError(describe_failure(self.description, result[0].value))
        self.port = result[0]

    def startService(self) -> None:
        super().startService()
        if self.port is None and self.waiting is None:
            self.waiting = self.endpoint.listen(self.factory)
            self.waiting.addCallback(self._listened)

    def _listened(self, port: Any) -> Any:
        self.port = port
        return port

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self.waiting is not None and not self.waiting.called:
            self.waiting.cancel()
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)
        return None


def describe_failure(description: str, e: BaseException) -> str:
    """One line: which listener, why, and what it probably means."""
    cause = getattr(e, "socketError", None) or e
    code = getattr(cause, "errno", None)
    if isinstance(cause, OSError) and cause.strerror:
        why = cause.strerror[0].lower() + cause.strerror[1:]
    elif isinstance(e, error.CannotListenError):
        why = str(cause)
    else:
        why = str(e) or type(e).__name__
    hint = HINTS.get(code or 0)
    return f"cannot listen on {description}: {why}" + (f" ({hint})" if hint else "")
