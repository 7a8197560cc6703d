"""Fairness between clients and the memory session boxes hold, with fakes: the pool's shares,
round-robin and push-out, its memory reservation, the base cgroup's limit on v1 and v2, and
who counts as a client."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage

from sandboxd.boxes.pool import QueueFull
from sandboxd.boxes.quota import box_memory_mb
from sandboxd.jobs.submit import Requests
from sandboxd.sandbox.cgroup import CgroupSupport
from sandboxd.service.assemble import default_box_memory_mb
from sandboxd.service.tap import Options
from sandboxd.wire.connection import Connection, ConnectionFactory
from tests.unit.test_pool import MIN, got, make_pool, waiting


def refused(d: defer.Deferred) -> str:
    """The message of a ``QueueFull`` the Deferred failed with (fails otherwise)."""
    errors: list = []
    d.addErrback(errors.append)
    assert errors and errors[0].check(QueueFull), errors
    return str(errors[0].value)


# -- the queue ---------------------------------------------------------------------------


def test_a_freed_box_goes_to_the_next_client_in_turn_not_the_flood():
    pool, _, clock = make_pool(boxes=1)
    box = got(pool.acquire(None, "flood"))
    order: list[str] = []
    given: list = []

    def served(result, name: str):
        order.append(name)
        given.append(result)
        return result

    for i in range(5):
        pool.acquire(None, "flood").addCallback(served, f"f{i}")
    pool.acquire(None, "benign").addCallback(served, "b")
    pool.acquire(None, "benign").addCallback(served, "b2")
    pool.acquire(None, "third").addCallback(served, "t")
    while len(order) < 8:
        pool.release(box)
        clock.advance(0)
        box = given[-1]
    # the box the flood held goes to the others first, then turn by turn: the client served
    # longest ago first, each client's own in order
    assert order == ["b", "t", "f0", "b2", "f1", "f2", "f3", "f4"]


def test_a_freed_box_goes_to_the_waiting_client_that_holds_fewest():
    pool, _, clock = make_pool(boxes=2)
    held = [got(pool.acquire(None, "flood")), got(pool.acquire(None, "flood"))]
    flood = [pool.acquire(None, "flood") for _ in range(3)]
    benign = pool.acquire(None, "benign")
    pool.release(held[0])
    assert got(benign) and all(waiting(d) for d in flood)
    pool.release(held[1])  # the flood holds none now, the benign client one
    assert got(flood[0]) and waiting(flood[1])
    assert pool.slots.held == {"flood": 1, "benign": 1}
    clock.advance(0)


def test_each_client_has_a_bounded_share_of_the_queue():
    pool, _, _ = make_pool(boxes=1, max_queue=100, max_queue_per_client=3)
    got(pool.acquire(None, "flood"))
    mine = [pool.acquire(None, "flood") for _ in range(3)]
    message = refused(pool.acquire(None, "flood"))
    assert "this client already has 3 requests waiting" in message
    assert "share of the queue (3)" in message
    assert all(waiting(d) for d in mine)
    assert waiting(pool.acquire(None, "benign"))  # another client still gets a place


def test_a_full_queue_pushes_out_the_newest_request_of_the_heaviest_client():
    pool, _, _ = make_pool(boxes=1, max_queue=4, max_queue_per_client=10)
    got(pool.acquire(None, "flood"))
    flood = [pool.acquire(None, "flood") for _ in range(4)]
    benign = pool.acquire(None, "benign")
    assert waiting(benign) and pool.waiting == 4
    message = refused(flood[-1])
    assert "gave its place to a client with fewer" in message
    assert all(waiting(d) for d in flood[:-1])


def test_a_full_queue_of_equal_clients_refuses_the_newcomer():
    pool, _, _ = make_pool(boxes=1, max_queue=2)
    got(pool.acquire(None, "a"))
    first, second = pool.acquire(None, "a"), pool.acquire(None, "b")
    assert refused(pool.acquire(None, "c")) == "the queue is full (2 waiting)"
    assert waiting(first) and waiting(second)


def test_a_cancelled_waiter_leaves_the_turn():
    pool, _, _ = make_pool(boxes=1)
    busy = got(pool.acquire(None, "a"))
    gone = pool.acquire(None, "a")
    gone.addErrback(lambda f: f.trap(defer.CancelledError))
    gone.cancel()
    later = pool.acquire(None, "b")
    assert pool.slots.queues.keys() == {"b"} and pool.waiting_by == {"b": 1}
    pool.release(busy)
    pool.release(got(later))
    assert pool.waiting == 0 and pool.waiting_by == {}
    assert pool.slots.held == pool.slots.served == {} and pool.slots.tokens == 1


# -- sessions ----------------------------------------------------------------------------


def test_each_client_has_a_bounded_share_of_the_sessions():
    pool, _, clock = make_pool(boxes=4, max_sessions=10, max_sessions_per_client=2)
    for sid in ("a1", "a2"):
        pool.release(got(pool.acquire(sid, "a")))
    message = refused(pool.acquire("a3", "a"))
    assert message.startswith("this client already has 2 live sessions, its share (2)")
    pool.release(got(pool.acquire("a1", "a")))  # its own live sessions still work
    pool.release(got(pool.acquire("b1", "b")))  # another client begins its own
    clock.advance(21 * MIN)  # a's sessions expire: its share is free again
    assert got(pool.acquire("a3", "a")).session_id == "a3"


def test_the_session_share_counts_new_sessions_still_waiting():
    pool, _, _ = make_pool(boxes=1, max_sessions_per_client=1)
    got(pool.acquire(None, "x"))
    assert waiting(pool.acquire("a1", "a"))
    assert "live sessions" in refused(pool.acquire("a2", "a"))


# -- the memory session boxes hold -------------------------------------------------------


def test_a_box_holds_at_most_its_size_and_its_inodes():
    # 256 inodes per MiB of disk_mb, 1.5 KiB each (an empty file: 0.96-1.46 KiB measured)
    assert box_memory_mb(64) == 88 and box_memory_mb(1024) == 1408 and box_memory_mb(0) == 0


def test_session_boxes_together_are_bounded_in_memory():
    pool, _, clock = make_pool(boxes=3, max_box_memory_mb=100, disk_mb=64)
    pool.release(got(pool.acquire("a", "x", 64)))
    assert pool.quota.memory_mb == 88
    message = refused(pool.acquire("b", "y", 64))
    assert message.startswith("session boxes would hold more memory than this server allows "
                              "(100 MiB): 88 MiB are taken by live sessions and this "
                              "session's box needs 88 MiB (run.disk_mb 64, and its inodes)")
    assert "b" not in pool.quota.mb and "b" not in pool.quota.owner
    pool.release(got(pool.acquire(None, "y", 1024)))  # anonymous boxes keep nothing
    pool.release(got(pool.acquire("a", "x", 72)))  # the same session may grow within it
    assert pool.quota.memory_mb == 99
    assert "needs 101 MiB" in refused(pool.acquire("a", "x", 73))
    pool.release(got(pool.acquire("a", "x", 8)))  # a smaller request keeps its largest
    assert pool.quota.mb == {"a": 72}
    clock.advance(21 * MIN)
    assert got(pool.acquire("b", "y", 64)).session_id == "b"
    assert pool.quota.mb == {"b": 64}


def test_a_session_box_is_made_with_the_size_it_reserved():
    pool, driver, _ = make_pool(boxes=2, max_box_memory_mb=110, disk_mb=64)
    sizes: dict[int, int] = {}
    create = driver.create_box
    driver.create_box = lambda box, mb: (sizes.__setitem__(box.number, mb), create(box, mb))
    box = got(pool.acquire("a", "x", 10))
    assert pool.quota.mb == {"a": 10} and sizes[box.number] == 10
    assert got(pool.acquire("b", "x")).session_id == "b"  # no disk_mb: the default size
    assert pool.quota.mb == {"a": 10, "b": 64}


def test_a_new_session_that_never_ran_gives_its_reservation_back():
    pool, _, _ = make_pool(boxes=1, max_box_memory_mb=200, disk_mb=10)
    busy = got(pool.acquire(None, "x"))
    waiter = pool.acquire("s", "x", 80)
    assert pool.quota.memory_mb == 110
    waiter.addErrback(lambda f: f.trap(defer.CancelledError))
    waiter.cancel()
    assert pool.quota.memory_mb == 0 and pool.quota.owner == {}
    pool.release(busy)
    pool.release(got(pool.acquire("t", "y", 100)))


def test_a_refused_request_takes_no_place_and_pushes_nobody_out():
    pool, _, _ = make_pool(boxes=1, max_queue=1, max_box_memory_mb=50, disk_mb=10)
    got(pool.acquire(None, "flood"))
    flood = pool.acquire(None, "flood")
    # over the memory bound: refused before the queue is looked at
    assert "more memory" in refused(pool.acquire("s", "benign", 60))
    assert waiting(flood)


# -- the base cgroup's limit -------------------------------------------------------------


def test_the_base_cgroup_limit_on_cgroup_v2(tmp_path: Path):
    (tmp_path / "memory.max").write_text("max\n")
    support = CgroupSupport(2, {"unified": tmp_path})
    assert support.limit_memory(3 * 1024 * 1024) is None
    assert (tmp_path / "memory.max").read_text() == str(3 * 1024 * 1024)


def test_the_base_cgroup_limit_on_cgroup_v1(tmp_path: Path):
    mem, pids = tmp_path / "memory", tmp_path / "pids"
    mem.mkdir()
    pids.mkdir()
    (mem / "memory.use_hierarchy").write_text("1\n")
    support = CgroupSupport(1, {"memory": mem, "pids": pids})
    assert support.limit_memory(5 * 1024 * 1024) is None
    assert (mem / "memory.limit_in_bytes").read_text() == str(5 * 1024 * 1024)
    (mem / "memory.use_hierarchy").write_text("0\n")
    assert "does not count its children" in (support.limit_memory(1) or "")


def test_the_base_cgroup_limit_that_cannot_be_set_says_why(tmp_path: Path):
    support = CgroupSupport(2, {"unified": tmp_path / "gone"})
    assert "cannot write" in (support.limit_memory(1) or "")
    assert CgroupSupport(None, {}).limit_memory(1) == "no cgroup"


def test_the_default_bound_is_a_quarter_of_the_machine(tmp_path: Path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree: 1 kB\n")
    assert default_box_memory_mb(str(meminfo)) == 16384000 // 1024 // 4
    assert default_box_memory_mb(str(tmp_path / "none")) == 1024


# -- who is a client ---------------------------------------------------------------------


class FakeX509Name:
    def __init__(self, der: bytes) -> None:
        self._der = der

    def der(self) -> bytes:
        return self._der


class FakeCert:
    def __init__(self, subject: bytes, issuer: bytes = b"ca") -> None:
        self.subject, self.issuer = subject, issuer

    def get_subject(self) -> FakeX509Name:
        return FakeX509Name(self.subject)

    def get_issuer(self) -> FakeX509Name:
        return FakeX509Name(self.issuer)


class FakeAddress:
    def __init__(self, host: str) -> None:
        self.host = host


class FakeTransport:
    def __init__(self, host: str | None = None, cert: FakeCert | None = None,
                 tls: bool = False) -> None:
        self.host, self.cert, self.tls = host, cert, tls

    def getPeer(self) -> FakeAddress:
        if self.host is None:
            raise AttributeError("a Unix socket's peer has no host")
        return FakeAddress(self.host)

    def getPeerCertificate(self) -> FakeCert | None:
        if not self.tls:
            raise AttributeError("not TLS")
        return self.cert


def client_of(factory: ConnectionFactory, transport: FakeTransport) -> str:
    conn = Connection(factory)
    conn.transport = transport
    return conn.client


def test_each_connection_is_its_own_client_by_default():
    factory = ConnectionFactory(Requests(None), None)  # type: ignore[arg-type]
    keys = {client_of(factory, FakeTransport("10.0.0.1")) for _ in range(3)}
    assert len(keys) == 3


def test_by_address_connections_of_one_host_or_one_ipv6_64_are_one_client():
    factory = ConnectionFactory(Requests(None), None, client_identity="address")  # type: ignore[arg-type]
    a = client_of(factory, FakeTransport("10.0.0.1"))
    assert a == client_of(factory, FakeTransport("10.0.0.1")) == "addr:10.0.0.1"
    assert client_of(factory, FakeTransport("::ffff:10.0.0.1")) == a
    assert client_of(factory, FakeTransport("10.0.0.2")) != a
    six = client_of(factory, FakeTransport("2001:db8:1:2::5"))
    assert six == client_of(factory, FakeTransport("2001:db8:1:2:ffff::9"))
    assert six == "addr:2001:db8:1:2::/64"
    assert client_of(factory, FakeTransport("2001:db8:1:3::5")) != six
    unix = {client_of(factory, FakeTransport(None)) for _ in range(2)}
    assert len(unix) == 2 and all(k.startswith("conn:") for k in unix)


def test_a_verified_client_certificate_names_the_client_whatever_the_address():
    factory = ConnectionFactory(Requests(None), None, client_identity="address")  # type: ignore[arg-type]
    alice = client_of(factory, FakeTransport("10.0.0.1", FakeCert(b"alice"), tls=True))
    assert alice.startswith("cert:")
    assert alice == client_of(factory, FakeTransport("10.0.0.9", FakeCert(b"alice"), tls=True))
    assert alice != client_of(factory, FakeTransport("10.0.0.1", FakeCert(b"bob"), tls=True))
    assert alice != client_of(factory,
                              FakeTransport("10.0.0.1", FakeCert(b"alice", b"other"), tls=True))
    # TLS without a client certificate: the address (or the connection)
    assert client_of(factory, FakeTransport("10.0.0.1", None, tls=True)) == "addr:10.0.0.1"


# -- the options -------------------------------------------------------------------------


def test_the_options_and_their_defaults():
    options = Options()
    options.parseOptions([])
    assert options["max-queue-per-client"] == 10 and options["max-sessions-per-client"] == 16
    assert options["client-identity"] == "connection" and options["max-box-memory-mb"] is None
    options = Options()
    options.parseOptions(["--client-identity=address", "--max-box-memory-mb=512",
                          "--max-queue-per-client=3", "--max-sessions-per-client=4"])
    assert (options["client-identity"], options["max-box-memory-mb"],
            options["max-queue-per-client"], options["max-sessions-per-client"]) == \
        ("address", 512, 3, 4)


@pytest.mark.parametrize("argv, says", [
    (["--client-identity=ip"], "neither connection nor address"),
    (["--max-queue-per-client=0"], "not a positive number"),
    (["--max-box-memory-mb=80"], "less than one session box of the default run.disk_mb (64 MiB)"
                                 " may hold with its inodes (88 MiB)"),
])
def test_wrong_options_are_one_clear_line(argv: list[str], says: str):
    with pytest.raises(usage.UsageError, match=re.escape(says)):
        Options().parseOptions(argv)


# -- a connection's lines, turn by turn --------------------------------------------------


@pytest.fixture
def turns(monkeypatch):
    from sandboxd.jobs import submit
    from sandboxd.limits import LimitPolicy
    from tests.unit.test_connection import FakeJob

    FakeJob.made = []
    monkeypatch.setattr(submit, "Job", FakeJob)  # every face makes its jobs there
    clock = Clock()
    factory = ConnectionFactory(requests=Requests(None), policy=LimitPolicy(), idle_timeout=None,
                                lines_per_turn=2, reactor=clock)

    def connect() -> tuple[Connection, StringTransport]:
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    return connect, clock, FakeJob


def request_line(rid: str) -> bytes:
    return json.dumps({"code": "x", "id": rid}).encode() + b"\n"


def test_a_pipelining_connection_gets_its_lines_handled_a_turn_at_a_time(turns):
    connect, clock, fake = turns
    flood, flood_transport = connect()
    other, _ = connect()
    flood.dataReceived(b"".join(request_line(f"f{i}") for i in range(5)))
    assert [j.request.id for j in fake.made] == ["f0", "f1"]
    assert flood_transport.producerState == "paused"  # the rest waits in the socket
    other.dataReceived(request_line("o"))  # another connection is not behind the flood
    assert [j.request.id for j in fake.made] == ["f0", "f1", "o"]
    clock.advance(0)
    clock.advance(0)
    assert [j.request.id for j in fake.made] == ["f0", "f1", "o", "f2", "f3", "f4"]
    assert flood_transport.producerState == "producing"


def test_the_last_line_after_a_half_close_waits_for_the_lines_before_it(turns):
    connect, clock, fake = turns
    proto, transport = connect()
    proto.dataReceived(b"".join(request_line(f"r{i}") for i in range(3))
                       + b'{"code": "x", "id": "last"}')
    proto.readConnectionLost()
    assert [j.request.id for j in fake.made] == ["r0", "r1"]
    for _ in range(3):
        clock.advance(0)
    assert [j.request.id for j in fake.made] == ["r0", "r1", "r2", "last"]
    assert not transport.disconnecting  # its requests still run
    for job in fake.made:
        job.finish()
    assert transport.disconnecting


def test_a_client_that_does_not_read_gets_no_more_lines_handled(turns):
    connect, clock, fake = turns
    proto, _ = connect()
    proto.dataReceived(b"".join(request_line(f"r{i}") for i in range(5)))
    proto.pauseProducing()  # its answers back up
    clock.advance(0)
    assert len(fake.made) == 2
    proto.resumeProducing()
    clock.advance(0)
    clock.advance(0)
    assert len(fake.made) == 5
