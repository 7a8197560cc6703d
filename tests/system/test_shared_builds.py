"""Builds shared between requests, on a real daemon: only between requests of the same build
settings, never a build stopped by its own request's limit, every request ends exactly once,
every wait for another request's build can be cancelled, and no box is lost on the way
(docs/security.md, "Shared and cached work keyed on the request's settings").

Requests that must race are sent on connections of their own from threads, together.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Client, Daemon, finals, go_main, output

BOXES = 3
WAIT = 90  # seconds: a request with no final event shows as a failure, not a hang


@pytest.fixture(scope="module")
def daemon(driver: str):
    d = Daemon(driver, boxes=BOXES).start()
    try:
        yield d
    finally:
        d.cleanup()


def fresh(text: str) -> str:
    """A program no build or cache has seen (the binary cache outlives a test)."""
    return go_main(f'\tfmt.Println("{text} {random.getrandbits(64)}")')


def slow_source(functions: int = 3500, per_group: int = 200) -> str:
    """A program whose build takes seconds (thousands of functions, called in groups so the
    compiler's memory stays well under the default build limit), never seen before, within
    the server's 512 KiB source bound (3500: ~490 KB).  Measured on an idle 2-core machine:
    3000 functions in one caller built in 1.2 s; 8000 in groups of 200 took 5.1 s, 590 MB."""
    salt = random.getrandbits(32)
    funcs = "\n".join(
        f"func f{i}(x int) int {{ s := 0; for j := 0; j < x; j++ {{ s += j * {i} % 7; "
        f"if s > {i} {{ s -= x }} }}; return s + {salt} }}" for i in range(functions))
    groups = range(0, functions, per_group)
    callers = "\n".join(
        f"func g{start}() int {{\n\tt := 0\n"
        + "\n".join(f"\tt += f{i}({i % 13})" for i in range(start, min(functions,
                                                                     start + per_group)))
        + "\n\treturn t\n}" for start in groups)
    calls = "\n".join(f"\tt += g{start}()" for start in groups)
    return (f"package main\n\nimport \"fmt\"\n\n{funcs}\n\n{callers}\n\nfunc main() {{\n"
            f"\tt := 0\n{calls}\n\tfmt.Println(t)\n}}\n")


class Sender(threading.Thread):
    """One request on its own connection; keeps every event, or the error that ended it."""

    def __init__(self, daemon: Daemon, request: dict[str, Any], after: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.d, self.request, self.after = daemon, request, after
        self.events: list[dict] = []
        self.error: BaseException | None = None
        self.client: Client | None = None
        self.connected = threading.Event()

    def run(self) -> None:
        time.sleep(self.after)
        try:
            with self.d.connect() as c:
                self.client = c
                c.send(self.request)
                c.shutdown_write()  # the connection closes after the request's final event
                self.connected.set()
                c.read_all(WAIT)
                self.events = c.events
        except BaseException as e:  # kept for the test to report
            self.error = e
            if self.client is not None:
                self.events = self.client.events
        finally:
            self.connected.set()

    def final(self) -> dict:
        assert self.error is None, f"{self.request['id']}: {self.error!r} after {self.events}"
        done = finals(self.events)  # fails on two final events
        assert list(done) == [self.request["id"]], (self.request["id"], self.events)
        return done[self.request["id"]]


def send_together(daemon: Daemon, requests: list[dict], gap: float = 0.0) -> list[Sender]:
    senders = [Sender(daemon, r, after=i * gap) for i, r in enumerate(requests)]
    for s in senders:
        s.start()
    for s in senders:
        s.join(WAIT + 30)
    return senders


def test_a_build_stopped_by_its_own_limit_is_no_one_elses_answer(daemon):
    """A: build.file_size_mb=1 (its link fails: file too large); B: the same source, default
    limits, on another connection at the same moment.  B's program runs; A gets its own
    limit's status, not compile_error, and never B's program (in flight or cached)."""
    a = {"id": "A", "limits": {"build": {"file_size_mb": 1}}}
    b = {"id": "B"}
    for order in ((a, b), (b, a), (a, b)):  # whichever comes first
        code = fresh("shared")
        senders = send_together(daemon, [{**r, "code": code} for r in order], gap=0.05)
        by_id = {s.request["id"]: s for s in senders}
        fa, fb = by_id["A"].final(), by_id["B"].final()
        assert fb["status"] == "ok", fb
        assert output(by_id["B"].events, "B", "stdout").startswith("shared ")
        assert fa["status"] == "build_limit" and fa["phase"] == "build", fa
        assert "file size limit of 1 MiB" in fa["message"], fa
        assert "file too large" in output(by_id["A"].events, "A", "stderr")
    # B's program is in the binary cache now: A's settings still do not get it.
    again = daemon.run({**a, "code": code, "id": "A2"})
    assert finals(again)["A2"]["status"] == "build_limit", again
    cached = daemon.run({"id": "B2", "code": code})
    assert finals(cached)["B2"]["status"] == "ok" and finals(cached)["B2"]["cached"] is True


def test_the_disk_limit_of_a_build_is_its_own_status(daemon):
    events = daemon.run({"code": fresh("tiny disk"), "id": "d",
                         "limits": {"build": {"disk_mb": 1}}})
    final = finals(events)["d"]
    assert final["status"] == "build_limit" and final["phase"] == "build", final
    assert "disk limit of 1 MiB" in final["message"], final


def test_a_compile_error_is_still_shared_between_requests_of_the_same_settings(daemon):
    code = go_main(f'\tfmt.Println(undefinedName{random.getrandbits(32)})')
    senders = send_together(daemon, [{"id": f"c{i}", "code": code} for i in range(3)])
    for s in senders:
        final = s.final()
        assert final["status"] == "compile_error", final
        assert "undefined: undefinedName" in output(s.events, s.request["id"], "stderr")


def runs_at_once(daemon: Daemon, n: int) -> None:
    """``n`` requests sent together all run at the same time: their runs overlap."""
    code = go_main('\tfmt.Println("start")\n\ttime.Sleep(2 * time.Second)\n'
                   f'\tfmt.Println("end {random.getrandbits(32)}")', ("fmt", "time"))
    senders = send_together(daemon, [{"id": f"cap{i}", "code": code} for i in range(n)])
    spans = []
    for s in senders:
        assert s.final()["status"] == "ok", s.events
        stamps = [int(e["timestamp"]) for e in s.events
                  if not e.get("done") and e.get("stream") == "stdout" and e.get("timestamp")]
        spans.append((min(stamps), max(stamps)))
    latest_start, earliest_end = max(a for a, _ in spans), min(b for _, b in spans)
    assert latest_start < earliest_end, f"the {n} runs did not all run at once: {spans}"


def test_racing_builds_of_one_source_all_end_once_and_lose_no_box(daemon):
    """One request's build times out under its own tiny build.wall_ms while identical
    requests with default limits arrive together: each request gets exactly one final event,
    none an internal error, the others' programs run; and afterwards every box still serves."""
    n = 2 * BOXES  # more requests than boxes: some wait for a box, then for a build
    for round_ in range(4):
        code = fresh(f"race {round_}")
        requests = [{"id": f"r{i}", "code": code} for i in range(n)]
        requests[0]["limits"] = {"build": {"wall_ms": 100}}
        senders = send_together(daemon, requests)
        for s in senders:
            final = s.final()
            assert final["status"] != "internal_error", final
            if s.request["id"] == "r0":
                assert final["status"] in ("timeout", "ok"), final
            else:
                assert final["status"] == "ok", final
    runs_at_once(daemon, BOXES)


def follower_freed(daemon: Daemon, how: str) -> None:
    """F waits for L's long build (same source, same settings) and is then cancelled (or its
    client leaves).  F ends at once with `cancelled` and gives its box back: with every other
    box busy (L's, and S's long sleep), a new request G runs in it and ends while L still
    builds.  (A wait that cannot be cancelled holds F, and its box, until L's build ends.)"""
    sleeper = Sender(daemon, {"id": "S", "code": go_main(
        f'\ttime.Sleep(8 * time.Second) // {random.getrandbits(32)}', ("time",))})
    sleeper.start()
    time.sleep(0.3)
    # G's program is built (and cached) first: G then only runs, so the test does not depend
    # on G's build being quicker than L's.
    g_code = fresh("g")
    assert finals(daemon.run({"id": "G0", "code": g_code}))["G0"]["status"] == "ok"
    code = slow_source()
    leader = Sender(daemon, {"id": "L", "code": code})
    leader.start()
    time.sleep(0.5)  # L is building
    f = daemon.connect()
    try:
        f.send({"id": "F", "code": code})
        time.sleep(0.5)  # F has its box and follows L's build
        if how == "cancel":
            f.send({"type": "cancel", "id": "F"})
            f.shutdown_write()
            f.read_all(WAIT)
            final = finals(f.events)["F"]
            assert final["status"] == "cancelled" and final["phase"] == "build", final
            assert final["message"] == "cancelled by the client", final
        else:
            f.close()  # the client went away while F waited for L's build
        time.sleep(0.3)
        g = Sender(daemon, {"id": "G", "code": g_code})
        g.start()
        g.join(WAIT + 30)
        leader.join(WAIT + 30)
        assert g.final()["status"] == "ok", g.events
        assert leader.final()["status"] == "ok", leader.events
        g_end, l_end = g.events[-1]["_received"], leader.events[-1]["_received"]
        assert g_end < l_end, "G could not run before L's build ended: F kept its box"
    finally:
        f.close()
        if sleeper.client is not None:
            sleeper.client.close()  # S is cancelled: its client left
        sleeper.join(WAIT + 30)


def test_a_request_waiting_for_anothers_build_can_be_cancelled(daemon):
    follower_freed(daemon, "cancel")


def test_a_follower_whose_client_leaves_gives_its_box_back_at_once(daemon):
    follower_freed(daemon, "leave")


def _cgroup_bases(d: Daemon) -> list[Path]:
    """The daemon's own base cgroups (v1: one per controller; v2: one)."""
    instance = "sandboxd-" + hashlib.sha256(str(d.state_dir.resolve()).encode()).hexdigest()[:8]
    bases = []
    assert d.proc is not None
    for line in Path(f"/proc/{d.proc.pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            root = Path("/sys/fs/cgroup") / (controller or "unified")
            if controller == "" and not (root / "cgroup.controllers").exists():
                root = Path("/sys/fs/cgroup")
            base = root / path.lstrip("/") / instance
            if base.is_dir():
                bases.append(base)
    return bases


def test_a_clean_stop_removes_what_was_left_behind(driver: str):
    """Whatever is still there when every box was destroyed (a request that never ended,
    a bug) is removed by a clean SIGTERM: box directories and mounts, build directories and
    mounts, this daemon's cgroups; and the log says so."""
    clean = Daemon(driver, boxes=1).start()
    try:  # a stop with nothing left behind says nothing of the kind
        assert finals(clean.run({"id": "w", "code": fresh("warm")}))["w"]["status"] == "ok"
        clean.stop()
        assert "left behind" not in clean.log() and "every box removed" in clean.log()
    finally:
        clean.cleanup()
    d = Daemon(driver, boxes=1).start()
    try:
        assert finals(d.run({"id": "w", "code": fresh("warm")}))["w"]["status"] == "ok"
        left = [d.state_dir / "boxes" / "9999", d.state_dir / "jobs" / "9999"]
        for path in left:
            path.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                           check=True)
        cgroups = [base / "leftover-9999" for base in _cgroup_bases(d)]
        for cg in cgroups:
            cg.mkdir()
        d.stop()
        mounts = Path("/proc/mounts").read_text()
        assert str(d.state_dir) not in mounts, mounts
        assert not any(p.exists() for p in left), left
        assert not any(cg.exists() for cg in cgroups), cgroups
        log = d.log()
        assert "box directories left behind (9999)" in log, log[-2000:]
        assert "build directories left behind (9999)" in log, log[-2000:]
        if cgroups:  # none where the daemon runs without cgroups
            assert "1 cgroups left behind; removed them" in log, log[-2000:]
    finally:
        d.cleanup()
