"""Fairness between clients and the memory session boxes hold, on a real daemon: a flooding
connection beside a benign one, the per-client share of the sessions, and the bound on what
session boxes keep in memory between requests (and where the kernel counts it)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from sandboxd.service.assemble import instance_name
from tests.harness import HANG, Daemon, finals, go_main, output

NAP = go_main('\ttime.Sleep(150 * time.Millisecond)\n\tfmt.Println("nap")',
              imports=("fmt", "time"))
HELLO = go_main('\tfmt.Println("hello")')
FLOOD = 3000  # at most, pipelined on one connection


@pytest.fixture(scope="module")
def default_daemon(driver: str):
    """Default queue options (--max-queue 100, --max-queue-per-client 10); one box."""
    d = Daemon(driver, boxes=1).start()
    try:
        yield d
    finally:
        d.cleanup()


def test_a_flooding_connection_does_not_starve_a_benign_one(default_daemon):
    """The flooder pipelines requests without pause (400 a second) for as long as the benign
    client's requests take, so the queue stays as full as it can make it."""
    d = default_daemon
    d.run({"code": NAP, "id": "warm"})  # built once: the flood is of runs, not builds
    flooder = d.connect()
    flood_events: list[dict] = []
    benign_done = threading.Event()
    sent = [0]

    def flood() -> None:
        while not benign_done.is_set() and sent[0] < FLOOD:
            flooder.send(json.dumps({"id": f"f{sent[0]}", "code": NAP}).encode() + b"\n")
            sent[0] += 1
            time.sleep(0.0025)
        flooder.shutdown_write()

    sender = threading.Thread(target=flood)
    reader = threading.Thread(target=lambda: flood_events.extend(flooder.read_all()))
    sender.start()
    reader.start()
    time.sleep(1.0)  # the flood is going: the queue is as full as it will get
    try:
        with d.connect() as benign:
            for i in range(3):
                benign.send({"id": f"b{i}", "code": NAP})
            benign.shutdown_write()
            started = time.monotonic()
            events = benign.read_all()
            took = time.monotonic() - started
    finally:
        benign_done.set()
        sender.join(HANG)
        reader.join(HANG)
        flooder.close()
    done = finals(events)
    assert {k: v["status"] for k, v in done.items()} == {f"b{i}": "ok" for i in range(3)}, done
    assert output(events, "b0") == "nap\n"
    flood_done = finals(flood_events)
    assert len(flood_done) == sent[0]  # one final event each
    statuses = [e["status"] for e in flood_done.values()]
    refused = [e for e in flood_done.values() if e["status"] == "queue_full"]
    assert set(statuses) == {"ok", "queue_full"}
    # the flood paid for itself: its requests past its share (10 waiting) were refused
    assert any("its share of the queue (10)" in e["message"] for e in refused)
    print(f"benign: 3 requests ok in {took:.2f} s beside a flood of {sent[0]} "
          f"({statuses.count('ok')} of them ran)")


@pytest.fixture(scope="module")
def share_daemon(driver: str):
    d = Daemon(driver, "--max-sessions=3", "--max-sessions-per-client=2", boxes=1).start()
    try:
        yield d
    finally:
        d.cleanup()


def test_one_client_cannot_take_every_session(share_daemon):
    d = share_daemon
    with d.connect() as greedy:
        for sid in ("g1", "g2", "g3"):
            greedy.send({"id": sid, "code": HELLO, "session_id": sid})
        greedy.shutdown_write()
        done = finals(greedy.read_all())
    assert done["g1"]["status"] == done["g2"]["status"] == "ok"
    assert done["g3"]["status"] == "queue_full"
    assert done["g3"]["message"].startswith(
        "this client already has 2 live sessions, its share (2)")
    events = d.run({"id": "n1", "code": HELLO, "session_id": "n1"})
    assert finals(events)["n1"]["status"] == "ok"  # another client still begins one
    events = d.run({"id": "g1-again", "code": HELLO, "session_id": "g1"})
    assert finals(events)["g1-again"]["status"] == "ok"  # a live session is anyone's to use


WRITE = go_main(
    '\tf, err := os.Create("/box/big")\n\tif err != nil {\n\t\tpanic(err)\n\t}\n'
    '\tbuf := make([]byte, 1<<20)\n\tfor i := range buf {\n\t\tbuf[i] = byte(i)\n\t}\n'
    '\tfor i := 0; i < 24; i++ {\n\t\tif _, err := f.Write(buf); err != nil {\n'
    '\t\t\tpanic(err)\n\t\t}\n\t}\n\tf.Close()\n\tfmt.Println("written")',
    imports=("fmt", "os"))
REMOVE = go_main('\tfmt.Println(os.Remove("/box/big"))', imports=("fmt", "os"))
BIG = {"disk_mb": 40, "file_size_mb": 30}


@pytest.fixture(scope="module")
def memory_daemon(driver: str):
    d = Daemon(driver, "--max-box-memory-mb=130", boxes=2).start()
    try:
        yield d
    finally:
        d.cleanup()


def base_memory_dir(d: Daemon) -> Path | None:
    """The daemon's base cgroup in the memory controller (v1) or the unified tree (v2)."""
    assert d.proc is not None
    name = f"sandboxd-{instance_name(d.state_dir)}"
    for line in Path(f"/proc/{d.proc.pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/") / name
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return Path("/sys/fs/cgroup") / path.lstrip("/") / name
    return None


def usage(base: Path) -> int:
    for name in ("memory.usage_in_bytes", "memory.current"):
        if (base / name).exists():
            return int((base / name).read_text())
    raise AssertionError(f"no memory usage file in {base}")


def test_session_boxes_are_bounded_in_memory_and_refused_clearly(memory_daemon):
    d = memory_daemon
    first = d.run({"id": "s1", "code": HELLO, "session_id": "s1", "limits": {"disk_mb": 64}})
    assert finals(first)["s1"]["status"] == "ok"
    # a box of 64 MiB may hold 88 MiB with its inodes: two would pass 130
    second = finals(d.run({"id": "s2", "code": HELLO, "session_id": "s2",
                           "limits": {"disk_mb": 64}}))["s2"]
    assert second["status"] == "queue_full" and second["phase"] == "queue"
    assert second["message"].startswith(
        "session boxes would hold more memory than this server allows (130 MiB): 88 MiB "
        "are taken by live sessions and this session's box needs 88 MiB (run.disk_mb 64, "
        "and its inodes)")
    # a smaller session fits (30 MiB: 42 with its inodes); anonymous boxes keep nothing
    small = d.run({"id": "s3", "code": HELLO, "session_id": "s3", "limits": {"disk_mb": 30}},
                  {"id": "anon", "code": HELLO, "limits": {"disk_mb": 1024}})
    assert {k: v["status"] for k, v in finals(small).items()} == {"s3": "ok", "anon": "ok"}
    assert "session boxes' files: at most 130 MiB" in d.log()


@pytest.fixture(scope="module")
def charge_daemon(driver: str):
    d = Daemon(driver, "--max-box-memory-mb=100", boxes=2).start()
    try:
        yield d
    finally:
        d.cleanup()


def test_what_a_session_box_holds_is_charged_where_a_limit_applies(charge_daemon):
    d = charge_daemon
    base = base_memory_dir(d)
    if base is None or not base.is_dir():
        pytest.fail(f"no memory cgroup for the daemon ({base}); this host has one")
    limit_file = base / ("memory.limit_in_bytes" if "memory/" in str(base) else "memory.max")
    limit = int(limit_file.read_text())
    # 100 MiB of session boxes + 2 boxes x (4096 build + 4096 run) + 256 MiB margin
    assert limit == (100 + 2 * (4096 + 4096) + 256) * 1024 * 1024, limit
    events = d.run({"id": "w", "code": WRITE, "session_id": "big", "limits": BIG})
    assert finals(events)["w"]["status"] == "ok", events
    held = usage(base)
    events = d.run({"id": "rm", "code": REMOVE, "session_id": "big", "limits": BIG})
    assert output(events, "rm") == "<nil>\n"
    freed = held - usage(base)
    print(f"the base cgroup held {held >> 20} MiB with 24 MiB in a session's box; removing "
          f"the file freed {freed >> 20} MiB of it")
    # the box's pages stayed charged under the limited base cgroup after their run ended
    assert freed >= 20 * 1024 * 1024, (held, freed)


SLEEPER = go_main('\tfmt.Println("up")\n\ttime.Sleep(1500 * time.Millisecond)',
                  imports=("fmt", "time"))


def test_a_client_certificate_is_one_client_over_all_its_connections(driver: str,
                                                                      tmp_path: Path):
    from tests.certs import make_cert, make_certs
    from tests.system.test_listeners import free_port, tls_connect, wait_port

    certs = make_certs(tmp_path)
    bob, bob_key = make_cert(tmp_path, "bob", "ca",
                             "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    port = free_port()
    d = Daemon(driver, f"--client-ca={certs.ca}", "--max-queue-per-client=1", boxes=1, listen=[
        f"ssl:{port}:interface=127.0.0.1:privateKey={certs.server_key}:certKey={certs.server}"])
    try:
        d.start()
        wait_port(port)
        first = tls_connect(port, certs, certs.client, certs.client_key)
        first.send({"id": "run", "code": SLEEPER, "limits": {"wall_ms": 20000}})
        assert first.read_event()["output"] == "up\n"  # it holds the only box
        first.send({"id": "wait", "code": HELLO})  # the client's one waiting request
        time.sleep(0.5)
        with tls_connect(port, certs, certs.client, certs.client_key) as again:
            again.send({"id": "more", "code": HELLO})  # the same certificate, a new connection
            refused = again.read_until_done("more")[-1]
        assert refused["status"] == "queue_full", refused
        assert "this client already has 1 requests waiting" in refused["message"]
        with tls_connect(port, certs, bob, bob_key) as other:  # another certificate
            other.send({"id": "bob", "code": HELLO})
            other_final = other.read_until_done("bob")[-1]
        assert other_final["status"] == "ok", other_final
        first.read_until_done("wait")  # TLS has no half-close: read to the last final event
        done = finals(first.events)
        first.close()
        assert done["run"]["status"] == done["wait"]["status"] == "ok"
    finally:
        d.cleanup()
