"""Line splitting, bad lines, ids and half-close on a fake transport, with fake jobs."""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from sandboxd.jobs import submit
from sandboxd.jobs.submit import Requests
from sandboxd.limits import LimitPolicy
from sandboxd.wire.connection import ConnectionFactory

CODE = "package main\n\nfunc main() {}\n"


class FakeJob:
    """Stands in for ``Job``: records what the connection asks of it; the test ends it."""

    made: list[FakeJob] = []

    def __init__(self, runtime, request, emit, client=None) -> None:
        self.request = request
        self.emit = emit
        self.done: defer.Deferred = defer.Deferred()
        self.paused = False
        self.cancelled: str | None = None
        self.stdin: list[bytes] = []
        self.stdin_closed = False
        FakeJob.made.append(self)

    def write_stdin(self, data: bytes, limit: int) -> str | None:
        if sum(map(len, self.stdin)) + len(data) > limit:
            return "too much stdin"
        self.stdin.append(data)
        return None

    def close_stdin(self) -> None:
        self.stdin_closed = True

    def start(self) -> defer.Deferred:
        return self.done

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def cancel(self, reason: str = "") -> None:
        self.cancelled = reason

    def finish(self) -> None:
        self.emit({"id": self.request.id, "done": True, "status": "ok"})
        self.done.callback(None)


@pytest.fixture
def conn(monkeypatch):
    FakeJob.made = []
    monkeypatch.setattr(submit, "Job", FakeJob)  # every face makes its jobs there
    factory = ConnectionFactory(requests=Requests(None), policy=LimitPolicy(), max_line_bytes=100,
                                idle_timeout=None)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def events(transport: StringTransport) -> list[dict]:
    data = transport.value()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def line(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


SHORT = line({"code": "x", "id": "a"})


def test_a_line_split_across_reads_is_one_request(conn):
    proto, transport = conn
    for i in range(len(SHORT)):
        proto.dataReceived(SHORT[i:i + 1])
    assert [j.request.id for j in FakeJob.made] == ["a"]
    assert transport.value() == b""


def test_several_lines_in_one_read_all_start_at_once(conn):
    proto, _ = conn
    proto.dataReceived(line({"code": "x", "id": "a"}) + line({"code": "x", "id": "b"}))
    assert [j.request.id for j in FakeJob.made] == ["a", "b"]


def test_blank_lines_are_ignored(conn):
    proto, transport = conn
    proto.dataReceived(b"\n\r\n  \n")
    assert transport.value() == b"" and not FakeJob.made


def test_bad_json_is_a_bad_request_and_the_next_line_works(conn):
    proto, transport = conn
    proto.dataReceived(b"{oops\n" + SHORT)
    (bad,) = events(transport)
    assert bad["status"] == "bad_request" and bad["done"] is True and bad["id"] is None
    assert "not valid JSON" in bad["message"]
    assert [j.request.id for j in FakeJob.made] == ["a"]
    assert transport.connected


def test_bad_request_keeps_the_clients_id(conn):
    proto, transport = conn
    proto.dataReceived(line({"id": "k", "code": 5}))
    assert events(transport)[0]["id"] == "k"


def test_an_over_long_line_is_refused_once_and_the_next_line_works(conn):
    proto, transport = conn
    long = line({"code": "x" * 200, "id": "long"})
    for i in range(0, len(long), 30):  # arriving in pieces, with no newline for a while
        proto.dataReceived(long[i:i + 30])
    proto.dataReceived(SHORT)
    (refused,) = events(transport)
    assert refused["status"] == "bad_request" and refused["id"] is None
    assert "longer than this server's maximum (100 bytes)" in refused["message"]
    assert [j.request.id for j in FakeJob.made] == ["a"]  # the long one never ran


def test_an_over_long_line_in_one_read_with_its_newline(conn):
    proto, transport = conn
    proto.dataReceived(line({"code": "x" * 200}) + SHORT)
    assert [e["status"] for e in events(transport)] == ["bad_request"]
    assert [j.request.id for j in FakeJob.made] == ["a"]


def test_a_line_of_exactly_the_maximum_is_accepted(conn):
    proto, transport = conn
    body = line({"code": "", "id": "m"})[:-1]
    exact = body[:-1] + b" " * (100 - len(body)) + b"}"
    assert len(exact) == 100
    proto.dataReceived(exact + b"\n")
    assert [j.request.id for j in FakeJob.made] == ["m"] and transport.value() == b""


def test_duplicate_in_flight_id_is_refused_and_free_again_when_done(conn):
    proto, transport = conn
    proto.dataReceived(SHORT + SHORT)
    (dup,) = events(transport)
    assert dup["status"] == "bad_request" and dup["id"] is None and dup["for_id"] == "a"
    assert "still running" in dup["message"]
    assert len(FakeJob.made) == 1
    FakeJob.made[0].finish()
    proto.dataReceived(SHORT)
    assert len(FakeJob.made) == 2


def test_half_close_with_no_jobs_closes(conn):
    proto, transport = conn
    proto.readConnectionLost()
    assert transport.disconnecting


def test_half_close_waits_for_every_job_then_closes(conn):
    proto, transport = conn
    proto.dataReceived(line({"code": "x", "id": "a"}) + line({"code": "x", "id": "b"}))
    proto.readConnectionLost()
    assert not transport.disconnecting
    FakeJob.made[1].finish()
    assert not transport.disconnecting
    FakeJob.made[0].finish()
    assert transport.disconnecting
    assert [e["id"] for e in events(transport)] == ["b", "a"]


def test_the_close_after_the_last_job_waits_until_the_transport_resumes_us(conn):
    """The last job ends while the transport holds us paused (its buffer over 64 KiB): Twisted's
    doWrite, once that buffer is empty, resumes a paused producer instead of closing, so a close
    asked then never happens and the client never sees the end (found with faketime's many
    small events).  The close is asked when the transport resumes us."""
    proto, transport = conn
    proto.dataReceived(line({"code": "x", "id": "a"}))
    proto.readConnectionLost()
    proto.pauseProducing()
    FakeJob.made[0].finish()
    assert not transport.disconnecting
    proto.resumeProducing()
    assert transport.disconnecting


def test_a_last_line_without_newline_still_runs_at_half_close(conn):
    proto, transport = conn
    proto.dataReceived(SHORT[:-1])
    assert not FakeJob.made
    proto.readConnectionLost()
    assert [j.request.id for j in FakeJob.made] == ["a"] and not transport.disconnecting
    FakeJob.made[0].finish()
    assert transport.disconnecting


def test_disconnect_cancels_every_job(conn):
    proto, transport = conn
    proto.dataReceived(line({"code": "x", "id": "a"}) + line({"code": "x", "id": "b"}))
    proto.connectionLost(None)
    assert all(j.cancelled == "the client disconnected" for j in FakeJob.made)
    FakeJob.made[0].finish()
    assert transport.value() == b""  # nothing is written to a gone client


def test_a_slow_client_pauses_jobs_and_new_ones_start_paused(conn):
    proto, _ = conn
    proto.dataReceived(SHORT)
    proto.pauseProducing()
    assert FakeJob.made[0].paused
    proto.dataReceived(line({"code": "x", "id": "b"}))
    assert FakeJob.made[1].paused
    proto.resumeProducing()
    assert not any(j.paused for j in FakeJob.made)


def test_server_ids_are_distinct(conn):
    proto, _ = conn
    proto.dataReceived(line({"code": "x"}) + line({"code": "x"}))
    ids = [j.request.id for j in FakeJob.made]
    assert len(set(ids)) == 2 and all(i.startswith("req-") for i in ids)


def test_stdin_and_cancel_lines_reach_the_running_request_unanswered(conn):
    proto, transport = conn
    proto.dataReceived(line({"code": "x", "id": "a", "interactive": True}))
    proto.dataReceived(line({"type": "stdin", "id": "a", "data": "one\n"}))
    proto.dataReceived(line({"type": "stdin", "id": "a", "data": "two", "eof": True}))
    job = FakeJob.made[0]
    assert job.stdin == [b"one\n", b"two"] and job.stdin_closed
    proto.dataReceived(line({"type": "cancel", "id": "a"}))
    assert job.cancelled is not None
    assert transport.value() == b""  # control lines that work are not answered


def test_control_lines_for_unknown_ids_get_bad_request_with_null_id(conn):
    proto, transport = conn
    proto.dataReceived(line({"type": "stdin", "id": "ghost", "data": "x"}))
    proto.dataReceived(line({"type": "cancel", "id": "ghost"}))
    proto.dataReceived(line({"type": "stdin", "id": "ghost", "data": 5}))
    proto.dataReceived(line({"type": "cancel"}))
    got = events(transport)
    assert [e["status"] for e in got] == ["bad_request"] * 4
    assert all(e["id"] is None for e in got)
    assert [e.get("for_id") for e in got] == ["ghost", "ghost", "ghost", None]
    assert [e.get("for_type") for e in got[:2]] == ["stdin", "cancel"]
    assert "no request with id 'ghost'" in got[0]["message"]


def test_half_close_ends_the_stdin_of_running_requests(conn):
    proto, _transport = conn
    proto.dataReceived(line({"code": "x", "id": "a", "interactive": True}))
    proto.readConnectionLost()
    assert FakeJob.made[0].stdin_closed
