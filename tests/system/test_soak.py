"""A bounded fault test: a real daemon under mixed load, clients that vanish, garbage, and a
SIGKILL with a restart in the middle; afterwards nothing has leaked.

About 2 minutes on this 2-core machine (``SOAK_S`` of load in two halves, plus two starts):

- 3 clients loop for the whole time over a Unix socket and TCP, each connection sending 1 to 3
  pipelined requests: benign programs (output, stdin, a session) and hostile ones from
  tests/programs (fork bomb, memory bomb, CPU spin, a sleeper past its wall limit, an output
  flood, processes left behind). About a third of the connections are dropped mid-request
  (closed after the first event, or right after sending).
- 1 client sends garbage: bytes that are not UTF-8, JSON that is not an object, a key twice,
  unknown fields, an over-long line, each followed by a valid request on the same connection.
- Halfway through, the daemon is killed with SIGKILL (clients mid-request) and started again
  on the same state directory.

Checked: on every connection that lived to its end (not cut by the kill, not dropped on
purpose) every request had exactly one final event, and every garbage line exactly one
``bad_request``; the restarted daemon swept what the killed one left (no box process, mount
or per-run cgroup beyond a fresh daemon's); and over the second half the daemon's descriptors
grew by at most ``FD_SLACK``, its resident memory by at most ``RSS_SLACK_MB`` MiB, and its
mounts, cgroups and processes not at all once the load stopped.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandboxd.service.assemble import instance_name
from tests.harness import DRIVERS, HANG, Client, Daemon, driver_missing, go_main
from tests.hostile import BENIGN, box_uids, processes_of, program

SOAK_S = 80  # seconds of load in all: half before the kill, half after
WORKERS = 3
FD_SLACK = 8  # descriptors
RSS_SLACK_MB = 30  # MiB of resident memory (Python's allocator keeps some of what it used)

ECHO = go_main('\tb, _ := io.ReadAll(os.Stdin)\n\tfmt.Printf("%d %s", len(b), b)',
               imports=("fmt", "io", "os"))
HELLO = go_main('\tfmt.Println("hello")')
BENIGN_REQUESTS = [
    {"code": HELLO},
    {"code": BENIGN},
    {"code": ECHO, "stdin": "some input\n"},
    {"code": HELLO, "session_id": "soak-1"},
    {"type": "version"},
]
HOSTILE_REQUESTS = [
    {"files": program("forkbomb"), "limits": {"wall_ms": 1500, "processes": 64}},
    {"files": program("memorybomb"), "limits": {"memory_mb": 64, "wall_ms": 5000}},
    {"files": program("cpuspin"), "limits": {"cpu_ms": 300, "wall_ms": 5000}},
    {"files": program("sleep"), "limits": {"wall_ms": 600}},
    {"files": program("flood"), "limits": {"output_bytes": 100_000}},
    {"files": program("leftover"), "limits": {"wall_ms": 2000}},
]
GARBAGE = [
    b"\xff\xfe not utf-8",
    b"[1, 2, 3]",
    b'{"code": "a", "code": "b"}',
    b'{"id": "g-unknown", "code": "package main", "colour": "red"}',
    b"{not json",
    b'{"id": "g-long", "code": "' + b"x" * (2 * 1024 * 1024 + 10) + b'"}',
]


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    checked_connections: int = 0
    checked_requests: int = 0
    dropped_on_purpose: int = 0
    cut_by_kill: int = 0
    garbage_lines: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)


class Soak:
    def __init__(self, daemon: Daemon, port: int) -> None:
        self.daemon = daemon
        self.port = port
        self.epoch = 0  # bumped when the daemon is killed: connections across it are cut
        self.stop = threading.Event()
        self.tally = Tally()

    def connect(self, rng: random.Random) -> Client:
        deadline = time.monotonic() + HANG
        while True:
            try:
                if rng.random() < 0.3:
                    return Client(sock=socket.create_connection(("127.0.0.1", self.port),
                                                                timeout=HANG))
                return self.daemon.connect()
            except OSError:  # the daemon is being restarted
                if time.monotonic() > deadline or self.stop.is_set():
                    raise
                time.sleep(0.1)

    def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        while not self.stop.is_set():
            epoch = self.epoch
            try:
                client = self.connect(rng)
            except OSError:
                continue
            with client:
                ids = []
                for _ in range(rng.randint(1, 3)):
                    n += 1
                    pool = HOSTILE_REQUESTS if rng.random() < 0.4 else BENIGN_REQUESTS
                    request = {**rng.choice(pool), "id": f"w{seed}-{n}"}
                    ids.append(request["id"])
                    try:
                        client.send(request)
                    except OSError:
                        break
                drop = rng.random()
                try:
                    if drop < 0.15:
                        self.tally.add(dropped_on_purpose=1)
                        continue  # closed right after sending
                    if drop < 0.3:
                        client.read_event(HANG)  # one event, then gone
                        self.tally.add(dropped_on_purpose=1)
                        continue
                    client.shutdown_write()
                    events = client.read_all(HANG)
                except OSError:
                    events = None
                if epoch != self.epoch or events is None:
                    self.tally.add(cut_by_kill=1)
                    continue
                self.check(ids, events)

    def check(self, ids: list[str], events: list[dict]) -> None:
        finals: dict[str, int] = {}
        for e in events:
            if e.get("done"):
                finals[e.get("id")] = finals.get(e.get("id"), 0) + 1
                with self.tally.lock:
                    status = e.get("status", "?")
                    self.tally.statuses[status] = self.tally.statuses.get(status, 0) + 1
                if e.get("status") == "internal_error":
                    self.tally.problem(f"internal_error: {e}")
        if finals != {i: 1 for i in ids}:
            self.tally.problem(f"final events {finals} for requests {ids}")
        self.tally.add(checked_connections=1, checked_requests=len(ids))

    def garbage(self) -> None:
        rng = random.Random(7)
        while not self.stop.is_set():
            epoch = self.epoch
            try:
                client = self.connect(rng)
            except OSError:
                continue
            lines = rng.sample(GARBAGE, rng.randint(1, 3))
            with client:
                try:
                    for line in lines:
                        client.send(line + b"\n")
                    client.send({"id": "g-after", "code": HELLO})
                    client.shutdown_write()
                    events = client.read_all(HANG)
                except OSError:
                    events = None
            if epoch != self.epoch or events is None:
                self.tally.add(cut_by_kill=1)
                continue
            finals = [e for e in events if e.get("done")]
            bad = [e for e in finals if e["status"] == "bad_request"]
            after = [e for e in finals if e.get("id") == "g-after"]
            if len(bad) != len(lines) or len(finals) != len(lines) + 1 or \
                    len(after) != 1 or after[0]["status"] != "ok":
                self.tally.problem(f"garbage {[x[:40] for x in lines]} answered {finals}")
            self.tally.add(garbage_lines=len(lines), checked_connections=1)

    def run_load(self, seconds: float, kill_after: float | None = None) -> None:
        self.stop.clear()
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True)
                   for i in range(WORKERS)]
        threads.append(threading.Thread(target=self.garbage, daemon=True))
        for t in threads:
            t.start()
        if kill_after is not None:
            time.sleep(kill_after)
            self.epoch += 1
            self.daemon.proc.send_signal(signal.SIGKILL)  # mid-request, for real
            self.daemon.proc.wait()
            self.daemon.proc = None
            self.epoch += 1
            self.daemon.start()
            seconds -= kill_after
        time.sleep(seconds)
        self.stop.set()
        for t in threads:
            t.join(HANG)
            assert not t.is_alive(), "a soak client hung"


# -- what the daemon holds -------------------------------------------------------------------

def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def mounts(daemon: Daemon) -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(daemon.state_dir))]


def cgroups(daemon: Daemon) -> list[str]:
    """Every cgroup under this daemon's base cgroups (one per controller)."""
    name = f"sandboxd-{instance_name(daemon.state_dir)}"
    found = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        if root.count("/") > 8:
            dirs[:] = []
            continue
        if os.path.basename(root) == name:
            found += [os.path.join(root, d) for d in dirs]
            dirs[:] = []
    return sorted(found)


def descendants(pid: int) -> list[str]:
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        children.setdefault(int(fields["PPid"]), []).append(int(entry))
        names[int(entry)] = fields.get("Name", "").strip()
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(f"{p} {names.get(p)}")
        todo += children.get(p, [])
    return sorted(out)


def settle(daemon: Daemon, seconds: float = 30) -> None:
    """Wait until no box process runs and the pool has refilled (held builds relaunched)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not processes_of(box_uids(daemon)):
            break
        time.sleep(0.2)
    time.sleep(3)  # sessions end (--session-idle=1), the pool refills


@dataclass
class Snapshot:
    fds: int
    rss_mb: float
    mounts: list[str]
    cgroups: list[str]
    processes: list[str]
    box_processes: list[str]

    @classmethod
    def of(cls, daemon: Daemon) -> Snapshot:
        pid = daemon.proc.pid
        return cls(fd_count(pid), rss_mb(pid), mounts(daemon), cgroups(daemon),
                   descendants(pid), processes_of(box_uids(daemon)))


# -- the test --------------------------------------------------------------------------------

@pytest.fixture
def driver() -> str:
    for name in DRIVERS:
        if driver_missing(name) is None:
            return name
    pytest.fail("no sandbox driver is installed")


def test_soak_with_hostile_clients_garbage_and_a_sigkill(driver: str):
    started = time.monotonic()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Sessions end 1 s after their last run, so that a settled daemon holds no session box.
    daemon = Daemon(driver, "--session-idle=1", "--cleanup-period=0.5", boxes=2,
                    listen=[f"tcp:{port}:interface=127.0.0.1"]).start()
    try:
        soak = Soak(daemon, port)
        settle(daemon)
        fresh = Snapshot.of(daemon)

        # First half, with the SIGKILL and restart a little before its end.
        soak.run_load(SOAK_S / 2, kill_after=SOAK_S / 2 - 5)
        # The restarted daemon swept what the killed one left; warm it up, then look.
        soak.run_load(5)
        settle(daemon)
        before = Snapshot.of(daemon)
        assert not before.box_processes, before.box_processes
        assert len(before.mounts) <= len(fresh.mounts), "\n".join(
            ["fresh:", *fresh.mounts, "after the restart:", *before.mounts, daemon.log()[-3000:]])
        assert len(before.cgroups) <= len(fresh.cgroups), (fresh.cgroups, before.cgroups)
        assert len(before.processes) <= len(fresh.processes), (fresh.processes,
                                                              before.processes)

        # Second half on the restarted daemon.
        soak.run_load(SOAK_S / 2)
        settle(daemon)
        after = Snapshot.of(daemon)
    finally:
        daemon.cleanup()
    t = soak.tally
    print(f"\nsoak: {time.monotonic() - started:.0f} s; {t.checked_connections} connections "
          f"checked ({t.checked_requests} requests, {t.garbage_lines} garbage lines), "
          f"{t.dropped_on_purpose} dropped mid-request, {t.cut_by_kill} cut by the kill; "
          f"statuses {dict(sorted(t.statuses.items()))}")
    print(f"soak: fds {before.fds} -> {after.fds}, rss {before.rss_mb:.1f} -> "
          f"{after.rss_mb:.1f} MiB, mounts {len(before.mounts)} -> {len(after.mounts)}, "
          f"cgroups {len(before.cgroups)} -> {len(after.cgroups)}, processes "
          f"{len(before.processes)} -> {len(after.processes)}")
    assert not t.problems, "\n".join(t.problems[:10])
    assert t.checked_requests >= 30 and t.garbage_lines >= 5 and t.dropped_on_purpose >= 3, t
    assert {"ok", "timeout", "memory_limit", "output_limit"} <= set(t.statuses), t.statuses
    assert after.fds <= before.fds + FD_SLACK
    assert after.rss_mb <= before.rss_mb + RSS_SLACK_MB
    assert len(after.mounts) <= len(before.mounts), (before.mounts, after.mounts)
    assert len(after.cgroups) <= len(before.cgroups), (before.cgroups, after.cgroups)
    assert len(after.processes) <= len(before.processes), (before.processes, after.processes)
    assert not after.box_processes, after.box_processes
