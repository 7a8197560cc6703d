"""Who a connection's requests count as, for the fair shares of the queue and the sessions
(``sandboxd.boxes.pool``): one rule for the line protocol and the HTTP faces."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from typing import Any


def certificate_identity(transport: Any) -> str | None:
    """The verified client certificate (issuer and subject), on a TLS transport that has one."""
    try:
        cert = transport.getPeerCertificate()
    except Exception:
        return None  # not a TLS transport
    if cert is None:
        return None
    digest = hashlib.sha256(cert.get_issuer().der() + b"/" + cert.get_subject().der())
    return f"cert:{digest.hexdigest()[:32]}"


def address_identity(transport: Any) -> str | None:
    """The peer's address (an IPv6 one by its /64; an IPv4-mapped one as IPv4)."""
    try:
        host = transport.getPeer().host
        address = ipaddress.ip_address(host)
    except Exception:
        return None  # a Unix socket, say: no address to group by
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            return f"addr:{ipaddress.ip_network(f'{address}/64', strict=False)}"
        return f"addr:{address.ipv4_mapped}"
    return f"addr:{address}"


def client_identity(transport: Any, by_address: bool, alone: Callable[[], str]) -> str:
    """The client certificate where one was verified (an ``ssl:`` listener with
    ``--client-ca``), else the peer's address when ``by_address`` (``--client-identity=
    address``), else ``alone()``: this connection on its own.  Asked after any TLS handshake."""
    return (certificate_identity(transport)
            or (by_address and address_identity(transport))
            or alone())
