"""Unit tests of sandboxd.sandbox.cgroup's v2 and v1 file handling on a fake cgroup tree.

The machines here have cgroup v1 only, so the v2 code cannot run for real in the suite; these
tests pin down what it writes and how it reads the kernel's files (formats as documented in the
kernel's cgroup-v2.rst), so a v2 host at least gets the files and fields right.
"""

from __future__ import annotations

from pathlib import Path

from sandboxd.sandbox import cgroup
from sandboxd.sandbox.cgroup import CgroupSupport, RunCgroup


def fake_v2(tmp_path: Path) -> Path:
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (root / "cgroup.subtree_control").write_text("")
    own = root / "system.slice" / "sandboxd.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    (own / "cgroup.procs").write_text("4242\n4243\n")
    (own / "cgroup.subtree_control").write_text("")
    return root


def test_v2_prepare_moves_our_processes_to_a_leaf_and_delegates(tmp_path):
    root = fake_v2(tmp_path)
    support = cgroup._prepare_v2(root, "/system.slice/sandboxd.service", "sandboxd-x")
    own = root / "system.slice" / "sandboxd.service"
    assert support.version == 2 and support.bases == {"unified": own / "sandboxd-x"}
    # A regular file stands in for cgroup.procs: the last pid written is what it holds.
    assert (own / "supervisor" / "cgroup.procs").read_text() == "4243"
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (own / "sandboxd-x" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"


def test_v2_prepare_from_the_supervisor_leaf_reuses_the_delegated_cgroup(tmp_path):
    """A daemon started from the leaf a first one made (a restart, or a daemon started by a
    process moved there) uses the same delegated cgroup and base: no .../supervisor/supervisor,
    so a restart sees, and sweeps, the cgroups a dead daemon left under its base."""
    root = fake_v2(tmp_path)
    first = cgroup._prepare_v2(root, "/system.slice/sandboxd.service", "sandboxd-x")
    own = root / "system.slice" / "sandboxd.service"
    (own / "supervisor" / "cgroup.procs").write_text("4243\n5000\n")
    left = first.bases["unified"] / "run-7"
    left.mkdir()
    again = cgroup._prepare_v2(root, "/system.slice/sandboxd.service/supervisor", "sandboxd-x")
    assert again.bases == first.bases
    assert not (own / "supervisor" / "supervisor").exists()
    assert sorted(p.name for p in again.bases["unified"].iterdir()) == [
        "cgroup.subtree_control", "run-7"]


def test_v2_prepare_in_a_container_namespace_root_moves_to_a_leaf(tmp_path):
    """In a container with its own cgroup namespace the daemon's cgroup is "/", the mount's
    root, but not the kernel's root (it has cgroup.type): its processes move to a leaf, else
    enabling controllers there fails (EBUSY) and the daemon would run without cgroups."""
    root = fake_v2(tmp_path)
    (root / "cgroup.type").write_text("domain\n")
    (root / "cgroup.procs").write_text("1\n")
    support = cgroup._prepare_v2(root, "/", "sandboxd-x")
    assert support.bases == {"unified": root / "sandboxd-x"}
    assert (root / "supervisor" / "cgroup.procs").read_text() == "1"


def test_v2_run_cgroup_limits_and_statistics(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    support = CgroupSupport(2, {"unified": base})
    run = support.create("run-1-1")
    d = base / "run-1-1"
    (d / "memory.swap.max").write_text("max\n")
    run.set_limits(64 * 1024 * 1024, 32)
    assert (d / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "32"
    assert run.procs_files == [str(d / "cgroup.procs")]
    (d / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    assert run.cpu_ns() == 1_500_000_000
    (d / "memory.peak").write_text("73400320\n")
    assert run.memory_peak_bytes() == 73400320
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\n")
    assert run.oom_killed() is False
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert run.oom_killed() is True
    (d / "pids.events").write_text("max 0\n")
    assert run.pids_refused() is False
    (d / "pids.events").write_text("max 3\n")
    assert run.pids_refused() is True


def test_v2_kill_all_uses_cgroup_kill(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "cgroup.kill").write_text("")
    (d / "cgroup.procs").write_text("")
    RunCgroup({"unified": d}, 2).kill_all()
    assert (d / "cgroup.kill").read_text() == "1"


def test_v1_run_cgroup_limits_and_statistics(tmp_path):
    bases = {c: tmp_path / c / "sandboxd-x" for c in cgroup.V1_CONTROLLERS}
    for b in bases.values():
        b.mkdir(parents=True)
    run = CgroupSupport(1, bases).create("run-1-2")
    mem = bases["memory"] / "run-1-2"
    (mem / "memory.memsw.limit_in_bytes").write_text("max")
    run.set_limits(128 * 1024 * 1024, 64)
    assert (mem / "memory.limit_in_bytes").read_text() == str(128 * 1024 * 1024)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(128 * 1024 * 1024)
    assert (bases["pids"] / "run-1-2" / "pids.max").read_text() == "64"
    (bases["cpuacct"] / "run-1-2" / "cpuacct.usage").write_text("2500000000\n")
    assert run.cpu_ns() == 2_500_000_000
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert run.oom_killed() is True
    assert len(run.procs_files) == len(cgroup.V1_CONTROLLERS)
