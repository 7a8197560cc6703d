"""What ``--listen`` strings become: Twisted endpoints, with sandboxd's safe defaults.

Every Twisted server endpoint string works (``tcp:``, ``ssl:``, ``unix:``, ``systemd:``,
``onion:`` from txtorcon, ...).  On top of Twisted's parsing, sandboxd:

- gives ``unix:`` sockets mode 660 (owner and group) instead of Twisted's world-writable 666,
  unless the string names a mode;
- listens with a backlog of 1024 (Twisted's is 50) on ``tcp:``, ``ssl:`` and ``unix:``, so
  hundreds of idle connections do not keep a real client from connecting;
- takes over a ``unix:`` socket a killed daemon left (see ``_clear_stale_unix_socket``);
- serves a Unix socket systemd passed (``systemd:domain=UNIX``) as systemd made it: Twisted's
  adopted port chmods the socket's path to 0666 (twisted/twisted#10261), which fails with EROFS
  under ``ProtectSystem=strict`` and otherwise makes the socket world-writable
  (see ``InheritedUnixEndpoint``);
- with ``--client-ca``, makes every ``ssl:`` listener demand a client certificate signed by
  one of the CA's certificates, at the handshake (``ssl:`` strings have no option for that);
- makes a client's TLS ``close_notify`` a half-close, like TCP's (``sandboxd.wire.tlshalfclose``).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from pathlib import Path
from typing import Any

from twisted.internet import abstract, defer, endpoints, error, fdesc, interfaces
from twisted.internet.address import UNIXAddress
from zope.interface import implementer

UNIX_DEFAULT_MODE = "660"
# Twisted listens with a backlog of 50: a burst of idle connections then makes a real client's
# connect fail (EAGAIN on a Unix socket) before the daemon has accepted them.
DEFAULT_BACKLOG = "1024"


class ListenerError(ValueError):
    """An endpoint string or a certificate file that cannot be used; says why."""


def with_safe_defaults(description: str) -> str:
    """``unix:`` sockets default to owner and group only, not Twisted's world-writable 666."""
    if description.startswith("unix:") and not re.search(r"(?<!\\):mode=", description):
        return f"{description}:mode={UNIX_DEFAULT_MODE}"
    return description


def with_backlog(description: str) -> str:
    """``tcp:``, ``ssl:`` and ``unix:`` listen with a deep backlog unless the string names one."""
    if (description.split(":", 1)[0] in ("tcp", "ssl", "unix")
            and not re.search(r"(?<!\\):backlog=", description)):
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


def load_client_ca(path: str | Path) -> list[Any]:
    """Every certificate in a PEM file (a CA bundle may hold several)."""
    from OpenSSL import crypto

    try:
        pem = Path(path).read_bytes()
    except OSError as e:
        raise ListenerError(f"cannot read --client-ca {path}: {e.strerror}") from None
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem,
                        flags=re.DOTALL)
    if not blocks:
        raise ListenerError(f"--client-ca {path} holds no PEM certificate")
    return [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]


def require_client_certificates(options: Any, ca_certs: list[Any]) -> None:
    """Make TLS options refuse, at the handshake, clients without a cert from ``ca_certs``:
    through the OpenSSL context the options hand out (``getContext``, made once and used for
    every connection), with pyOpenSSL's own calls."""
    from OpenSSL import SSL

    context = options.getContext()
    store = context.get_cert_store()
    for cert in ca_certs:
        store.add_cert(cert)
    context.set_client_ca_list([cert.get_subject() for cert in ca_certs])
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                       lambda _conn, _cert, _errno, _depth, ok: bool(ok))


def _clear_stale_unix_socket(description: str) -> None:
    """Take over what a killed daemon left at a ``unix:`` path.

    Twisted removes a stale socket only when it finds a stale lock (``lockfile=1``, a dead
    pid). Two cases it misses: a lock that names *this* pid (a container restarted with the
    same pid: Twisted would think the lock is held), and a socket with no lock to go by
    (``lockfile=0``, or the lock removed). A socket nobody listens on refuses connections:
    then it is stale, and removed. A live daemon's socket accepts, and is left alone.
    """
    if not description.startswith("unix:"):
        return
    args = _split_args(description[len("unix:"):])
    path = args.get("address") or args.get("")
    if not path:
        return
    lock = f"{path}.lock"
    try:
        if os.readlink(lock) == str(os.getpid()):
            os.unlink(lock)
    except OSError:
        pass
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return  # not ours to remove; the listen fails and says why
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


def _split_args(rest: str) -> dict[str, str]:
    """``a:b=c`` → {'': 'a', 'b': 'c'}; enough of Twisted's syntax to find a unix path."""
    out: dict[str, str] = {}
    for part in re.split(r"(?<!\\):", rest):
        part = part.replace("\\:", ":")
        key, sep, value = part.partition("=")
        if sep:
            out[key] = value
        elif "" not in out:
            out[""] = part
    return out


@implementer(interfaces.IListeningPort)
class _InheritedUnixPort(abstract.FileDescriptor):
    """A listening Unix socket accepted from by hand: each connection goes to the reactor's
    public ``adoptStreamConnection``; the socket's path is never touched (no chmod)."""

    def __init__(self, reactor: Any, sock: socket.socket, factory: Any) -> None:
        super().__init__(reactor)
        self.socket = sock
        self.factory = factory
        self._address = UNIXAddress(sock.getsockname() or None)

    def fileno(self) -> int:
        return self.socket.fileno() if self.socket is not None else -1

    def startListening(self) -> None:
        self.factory.doStart()
        self.connected = True
        self.startReading()

    def doRead(self) -> None:
        for _ in range(100):  # as many as are waiting, a bounded number per wake-up
            try:
                conn, _ = self.socket.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                               errno.ENOMEM, errno.ECONNABORTED):
                    return
                raise
            try:
                conn.setblocking(False)
                self.reactor.adoptStreamConnection(conn.fileno(), socket.AF_UNIX, self.factory)
            finally:
                conn.close()  # the reactor took a duplicate

    def stopListening(self) -> defer.Deferred[None]:
        self.stopReading()
        if self.socket is not None:
            self.socket.close()
            self.socket = None
            self.connected = False
            self.factory.doStop()
        return defer.succeed(None)

    def connectionLost(self, reason: Any) -> None:
        self.stopListening()

    def getHost(self) -> UNIXAddress:
        return self._address


@implementer(interfaces.IStreamServerEndpoint)
class InheritedUnixEndpoint:
    """``systemd:domain=UNIX``: the inherited socket served as systemd made it (its owner,
    group and ``SocketMode``), with no write to its path: Twisted's adopted port chmods it."""

    def __init__(self, reactor: Any, fileno: int) -> None:
        self.reactor = reactor
        self.fileno = fileno
        self._used = False

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        if self._used:
            return defer.fail(error.AlreadyListened())
        self._used = True
        try:
            fdesc.setNonBlocking(self.fileno)
            sock = socket.socket(fileno=self.fileno)  # takes the descriptor over
            if sock.family != socket.AF_UNIX:
                sock.detach()
                raise ListenerError(f"descriptor {self.fileno} is not a Unix socket")
            port = _InheritedUnixPort(self.reactor, sock, factory)
            port.startListening()
        except BaseException:
            return defer.fail()
        return defer.succeed(port)

def _plain(e: BaseException) -> str:
    """Twisted's parse errors in words: the value that is wrong, or which kind is unknown."""
    text = str(e)
    number = re.match(r"invalid literal for int\(\) with base \d+: (.*)", text)
    if number:
        return f"{number.group(1)} is not a number"
    if isinstance(e, ValueError) and text.startswith("Unknown endpoint type"):
        return text.replace("Unknown endpoint type", "unknown endpoint type") + (
            " (tcp:, ssl:, unix:, systemd:, onion: with txtorcon)")
    return text or type(e).__name__


def endpoint_for(reactor: Any, description: str,
                 client_ca: list[Any] | None = None) -> interfaces.IStreamServerEndpoint:
    """The server endpoint a ``--listen`` string names, with sandboxd's defaults applied."""
    given = description  # errors quote what the operator typed, not our added defaults
    description = with_backlog(with_safe_defaults(description))
    _clear_stale_unix_socket(description)
    if description.startswith("ssl:"):
        # TLS's close_notify as a half-close (sandboxd.wire.tlshalfclose), and the client CA
        # applied to the options the string names, both where the endpoint listens.
        from sandboxd.wire.tlshalfclose import HalfCloseTLSReactor

        ca = client_ca
        reactor = HalfCloseTLSReactor(
            reactor, (lambda options: require_client_certificates(options, ca)) if ca else None)
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError, IndexError, OSError, ImportError) as e:
        if description.startswith("systemd:") and isinstance(e, IndexError):
            raise ListenerError(
                f"{given}: no such descriptor was inherited (is LISTEN_FDS/LISTEN_PID "
                "set, as systemd does?)") from None
        raise ListenerError(f"cannot listen on {given}: {_plain(e)}") from None
    if (isinstance(endpoint, endpoints.AdoptedStreamServerEndpoint)
            and endpoint.addressFamily == socket.AF_UNIX):
        endpoint = InheritedUnixEndpoint(endpoint.reactor, endpoint.fileno)
    return endpoint
