"""Hosts with neither cgroup v2 nor the v1 controllers (``--cgroups=off``): rlimits, the pid
namespace and the box uid still give every hostile program its right status."""

from __future__ import annotations

import time

import pytest

from tests.harness import Daemon, output
from tests.hostile import SPIN_CPU_MS, beside, lingering, program, strict_end


@pytest.fixture(scope="module")
def daemon(driver: str):
    d = Daemon(driver, "--cgroups=off", boxes=3).start()
    try:
        yield d
    finally:
        d.cleanup()


def test_log_says_which_mechanism_each_limit_uses(daemon):
    deadline = time.monotonic() + 10
    while "limit mechanism: output" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = daemon.log()
    assert "no usable cgroup (turned off with --cgroups=off)" in log
    for line in ("memory: RLIMIT_AS", "processes: RLIMIT_NPROC", "cpu time: CPU time of the box "
                 "uid's processes", "wall time: daemon timer", "box disk: a tmpfs",
                 "file size:", "open files:"):
        assert f"limit mechanism: {line}" in log, line


def test_memory_bomb_is_memory_limit(daemon):
    events = beside(daemon, {"files": program("memorybomb"),
                             "limits": {"memory_mb": 64, "wall_ms": 20000}})
    final = next(e for e in events if e.get("done"))
    assert final["status"] == "memory_limit", (final, output(events))
    assert output(events, "hostile", "stdout").startswith("start\n")


def test_memory_spread_over_processes_is_memory_limit(daemon):
    events = beside(daemon, {"files": program("memoryfork"),
                             "limits": {"memory_mb": 96, "wall_ms": 20000}})
    final = next(e for e in events if e.get("done"))
    assert final["status"] == "memory_limit", (final, output(events))
    assert final["wall_ms"] < 15000


def test_fork_bomb_is_contained(daemon):
    events = beside(daemon, {"files": program("forkbomb"),
                             "limits": {"wall_ms": 2000, "processes": 64}})
    final = next(e for e in events if e.get("done"))
    assert final["status"] == "timeout" and "wall" in final["message"], final


def test_refused_processes_are_named_in_the_message(daemon):
    events = beside(daemon, {"files": program("manyprocs"), "limits": {"processes": 16}})
    final = next(e for e in events if e.get("done"))
    assert final["status"] == "runtime_error" and final["exit_code"] == 1, final
    assert "(it reached its process limit of 16)" in final["message"], final


def test_cpu_spin_is_cpu_timeout(daemon):
    events = beside(daemon, {"files": program("cpuspin"),
                             "limits": {"cpu_ms": SPIN_CPU_MS, "wall_ms": 20000}})
    final = next(e for e in events if e.get("done"))
    assert final["status"] == "timeout" and "cpu" in final["message"], final
    assert final["time_ms"] >= SPIN_CPU_MS and final["wall_ms"] < 15000


def test_processes_left_behind_end_with_the_request(daemon):
    events = strict_end(daemon, {"files": program("leftover"), "limits": {"wall_ms": 5000}})
    final = next(e for e in events if e.get("done"))
    assert final["status"] == "ok" and final["wall_ms"] < 4000, final


def test_killed_processes_are_gone_before_the_final_event(daemon):
    # A detached process with a large heap and none of the request's descriptors: killed, it
    # still exists while its memory is freed, after the pipes closed and bwrap's outer process
    # exited (and the sandbox's init waits for it).  The final event must wait for its end.
    events = strict_end(daemon, lingering())
    final = next(e for e in events if e.get("done"))
    assert final["status"] == "ok", (final, output(events))
    assert output(events, "alone", "stdout").startswith("left ")
