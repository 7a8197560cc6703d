"""sandboxd.api's contract with a balancer, on a fake transport (logic only; the real thing
through HAProxy is tests/system/test_cluster.py): session_id goes first on the wire, one session per
connection, and a connection lost under a request says what that means."""

from __future__ import annotations

import json

import pytest
from twisted.internet import error
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sandboxd import api


def connected() -> tuple[api.SandboxdProtocol, StringTransport]:
    proto = api.SandboxdProtocol()
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_session_id_is_the_first_key_on_the_wire():
    proto, transport = connected()
    proto.request({"code": "x" * 40_000, "type": "run", "session_id": "user_1"})
    line = transport.value()
    # A balancer reads the first 16 KiB: the session is in the first bytes, whatever the size.
    assert line.startswith(b'{"session_id": "user_1", ')
    assert json.loads(line)["code"] == "x" * 40_000


def test_one_session_per_connection():
    proto, transport = connected()
    proto.request({"code": "a", "session_id": "s1"})
    proto.request({"code": "b", "session_id": "s1"})
    proto.request({"code": "c"})  # anonymous requests may ride along: they run anywhere
    with pytest.raises(api.OneSessionPerConnection, match="open a connection per session"):
        proto.request({"code": "d", "session_id": "s2"})
    assert len(transport.value().splitlines()) == 3  # the refused one was not sent

    anonymous, _ = connected()
    anonymous.request({"code": "a"})
    with pytest.raises(api.OneSessionPerConnection, match="anonymous requests"):
        anonymous.request({"code": "b", "session_id": "s1"})


def test_a_lost_connection_says_what_happened():
    proto, _ = connected()
    started = proto.request({"id": "r1", "code": "a"})
    waiting = proto.request({"id": "r2", "code": "b"})
    proto.lineReceived(json.dumps({"id": "r1", "stream": "stdout", "output": "hi\n"}).encode())
    proto.connectionLost(Failure(error.ConnectionDone()))
    failures = []
    started.addErrback(failures.append)
    waiting.addErrback(failures.append)
    first, second = (str(f.value) for f in failures)
    assert all(isinstance(f.value, api.ConnectionClosed) for f in failures)
    assert "was closed before request 'r1' ended" in first
    assert "1 of its events had come" in first and "killed" in first
    assert "Whether it ran is unknown" in first and "session_new" in first
    assert "no event of it had come" in second

    reset, _ = connected()
    reset.lineReceived(json.dumps({"id": "r0", "done": True, "status": "ok"}).encode())
    d = reset.request({"id": "r3", "code": "a"})
    reset.connectionLost(Failure(error.ConnectionLost()))
    lost = []
    d.addErrback(lost.append)
    assert "was reset before request 'r3' ended" in str(lost[0].value)

    # A connection on which nothing ever came is another failure, said as such (no server, a
    # TLS port: sandboxd.api.closed_because); behind a balancer, also no daemon at all.
    silent, _ = connected()
    d = silent.request({"id": "r4", "code": "a"})
    silent.connectionLost(Failure(error.ConnectionDone()))
    lost = []
    d.addErrback(lost.append)
    assert "ended before any answer" in str(lost[0].value)
