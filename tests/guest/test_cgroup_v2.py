"""cgroup v2 for real, in the guest of ``make test-cgroup2`` (scripts/cgroup2/): a Linux booted
with only the unified hierarchy, this test run inside a systemd service with ``Delegate=yes``.
The v1 side of the same behaviour: tests/system/test_operations.py and tests/unit/test_limits.py
on the host."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from tests.harness import HANG, Daemon, finals, go_main, output

CGROUP = Path("/sys/fs/cgroup")
HELLO = go_main('\tfmt.Println("hello")')


def own_cgroup() -> Path:
    return CGROUP / Path("/proc/self/cgroup").read_text().split(":", 2)[2].strip().lstrip("/")


def base_of(d: Daemon) -> Path:
    """The base the daemon logs at start (after its socket exists: wait for the line)."""
    deadline = time.monotonic() + HANG
    while not (found := re.search(r"cgroup v2 under (\S+)", d.log())):
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.1)
    return Path(found.group(1).rstrip(","))


def test_the_guest_has_cgroup_v2_only():
    assert (CGROUP / "cgroup.controllers").exists()
    assert {"memory", "pids", "cpu"} <= set((CGROUP / "cgroup.controllers").read_text().split())
    assert not [line for line in Path("/proc/mounts").read_text().splitlines()
                if line.split()[2] == "cgroup"]  # no v1 hierarchy mounted


def test_daemons_started_one_after_another_use_one_delegated_cgroup():
    """Each start used to move itself (and this test process) one ``supervisor`` deeper."""
    bases = []
    for i in range(3):
        d = Daemon("bubblewrap")
        try:
            d.start()
            bases.append(base_of(d))
            events = d.run({"id": f"n{i}", "code": HELLO})
            assert output(events, f"n{i}") == "hello\n"
            assert d.stop() in (0, -signal.SIGTERM)
            # Every build and run cgroup removed; nothing under the daemon's base.
            assert not [p for p in bases[-1].glob("*") if p.is_dir()]
        finally:
            d.cleanup()
    parents = {b.parent for b in bases}
    assert len(parents) == 1, bases
    assert "supervisor/supervisor" not in str(own_cgroup())
    assert own_cgroup().name == "supervisor" and own_cgroup().parent in parents


def test_limits_on_v2_memory_oom_pids_and_cpu():
    """The statuses and figures the v1 host gives (tests/unit/test_limits.py), from v2's files."""
    d = Daemon("bubblewrap").start()
    try:
        hog = go_main('\tb := make([][]byte, 0)\n\tfor {\n\t\tb = append(b, make([]byte, 1<<20))'
                      '\n\t\tfor i := range b[len(b)-1] {\n\t\t\tb[len(b)-1][i] = 1\n\t\t}\n\t}'
                      '\n\tfmt.Println(len(b))')
        oom = finals(d.run({"id": "oom", "code": hog, "limits": {"memory_mb": 64}}))["oom"]
        assert oom["status"] == "memory_limit", oom
        spin = go_main('\tx := 0\n\tfor i := 0; i < 300000000; i++ {\n\t\tx += i\n\t}'
                       '\n\tfmt.Println(x > 0)')
        busy = finals(d.run({"id": "cpu", "code": spin}))["cpu"]
        assert busy["status"] == "ok" and busy["time_ms"] > 0 and busy["memory_kb"] > 0, busy
        assert d.stop() in (0, -signal.SIGTERM)
        assert not [p for p in base_of(d).glob("*") if p.is_dir()]
    finally:
        d.cleanup()
