"""Control groups: memory, process and CPU limits that hold for a whole box, on v1 or v2 hosts.

One cgroup is made for each sandboxed process tree (a build or a run) and removed after it, so
its peak memory, CPU time and OOM count belong to that phase alone.  The launcher joins it
before anything of the request runs (see ``sandboxd.launcher``), so nothing escapes it by forking
early.  Hosts with neither usable v2 nor the v1 memory and pids controllers get rlimits only.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.logger import Logger

if TYPE_CHECKING:
    from sandboxd.limits import PhaseLimits

log = Logger()

V1_CONTROLLERS = ("memory", "pids", "cpuacct", "freezer")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def _keyed(path: Path, key: str) -> int | None:
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _pids(path: Path) -> list[int]:
    return [int(p) for p in (_read(path) or "").split()]


class RunCgroup:
    """The cgroup of one build or run."""

    def __init__(self, dirs: dict[str, Path], version: int) -> None:
        self.dirs = dirs
        self.version = version

    @property
    def procs_files(self) -> list[str]:
        """The files the launcher writes its pid into."""
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def set_limits(self, memory_bytes: int, processes: int) -> None:
        if self.version == 2:
            d = self.dirs["unified"]
            _write(d / "memory.max", str(memory_bytes))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", str(processes))
            return
        mem = self.dirs["memory"]
        _write(mem / "memory.limit_in_bytes", str(memory_bytes))
        if (mem / "memory.memsw.limit_in_bytes").exists():
            try:
                _write(mem / "memory.memsw.limit_in_bytes", str(memory_bytes))
            except OSError:
                pass
        _write(self.dirs["pids"] / "pids.max", str(processes))

    def cpu_ns(self) -> int | None:
        if self.version == 2:
            usec = _keyed(self.dirs["unified"] / "cpu.stat", "usage_usec")
            return None if usec is None else usec * 1000
        if "cpuacct" in self.dirs:
            return _int(self.dirs["cpuacct"] / "cpuacct.usage")
        return None

    def memory_peak_bytes(self) -> int | None:
        if self.version == 2:
            return _int(self.dirs["unified"] / "memory.peak")
        return _int(self.dirs["memory"] / "memory.max_usage_in_bytes")

    def oom_killed(self, certain: bool = False) -> bool:
        """Whether the OOM killer struck in this cgroup.  Old v1 kernels (before 4.13) have
        no OOM-kill count; there the limit having been hit is taken instead, unless
        ``certain`` is asked for (a hit limit may have been met by reclaiming cache)."""
        if self.version == 2:
            return (_keyed(self.dirs["unified"] / "memory.events", "oom_kill") or 0) > 0
        mem = self.dirs["memory"]
        kills = _keyed(mem / "memory.oom_control", "oom_kill")
        if kills is not None:
            return kills > 0
        return not certain and (_int(mem / "memory.failcnt") or 0) > 0

    def pids_refused(self) -> bool:
        """Whether a fork or thread creation was refused for the process limit."""
        d = self.dirs.get("unified") or self.dirs.get("pids")
        if d is None:
            return False
        return (_keyed(d / "pids.events", "max") or 0) > 0

    def processes(self) -> list[int]:
        d = self.dirs.get("unified") or self.dirs.get("pids") or self.dirs["memory"]
        return _pids(d / "cgroup.procs")

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup, fork bombs included."""
        if self.version == 2:
            d = self.dirs["unified"]
            if (d / "cgroup.kill").exists():
                try:
                    _write(d / "cgroup.kill", "1")
                    return
                except OSError:
                    pass
        freezer = self.dirs.get("freezer")
        if freezer is not None:
            try:
                _write(freezer / "freezer.state", "FROZEN")
            except OSError:
                freezer = None
        for _ in range(100):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if freezer is not None:
                break
        if freezer is not None:
            try:
                _write(freezer / "freezer.state", "THAWED")
            except OSError:
                pass

    def remove(self) -> None:
        """Remove the cgroup; processes still inside are killed first."""
        for attempt in range(50):
            if self.processes():
                self.kill_all()
            busy = False
            for d in self.dirs.values():
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    busy = True
            if not busy:
                return
            time.sleep(0.002 * (attempt + 1))
        log.warn("cgroup {dirs} still busy; left for the cleanup loop", dirs=self.dirs)


@dataclass
class CgroupSupport:
    """What this host offers; ``version`` is None where no usable cgroup was found."""

    version: int | None
    bases: dict[str, Path]
    reason: str = ""

    def describe(self) -> str:
        if self.version is None:
            return f"no usable cgroup ({self.reason})"
        return f"cgroup v{self.version} under " + ", ".join(str(p) for p in self.bases.values())

    def create(self, name: str, limits: PhaseLimits | None = None) -> RunCgroup | None:
        """A run's cgroup, bounded by ``limits`` (memory, processes) when given."""
        if self.version is None:
            return None
        dirs = {}
        try:
            for controller, base in self.bases.items():
                d = base / name
                d.mkdir(exist_ok=True)
                dirs[controller] = d
            cgroup = RunCgroup(dirs, self.version)
            if limits is not None:
                cgroup.set_limits(limits.memory_mb * 1024 * 1024, limits.processes)
        except OSError:
            RunCgroup(dirs, self.version).remove()
            raise
        return cgroup

    def limit_memory(self, memory_bytes: int) -> str | None:
        """Bound the memory charged to everything under our base cgroup, together: every
        build and run, and what their cgroups leave charged when they are removed (the pages
        of files written into a session's box stay charged there: v1 moves a removed cgroup's
        charges to its parent or keeps them in it offline, v2 keeps a dying cgroup's charges,
        both counted in the base's usage).  None when set, else why not."""
        if self.version is None:
            return "no cgroup"
        if self.version == 2:
            path = self.bases["unified"] / "memory.max"
        else:
            base = self.bases["memory"]
            if _int(base / "memory.use_hierarchy") == 0:
                return f"{base} does not count its children (memory.use_hierarchy is 0)"
            path = base / "memory.limit_in_bytes"
        try:
            _write(path, str(memory_bytes))
        except OSError as e:
            return f"cannot write {path}: {e.strerror or e}"
        return None

    def sweep(self) -> int:
        """Kill and remove every cgroup left under our bases (a dead daemon's, say)."""
        count = 0
        names = set()
        for base in self.bases.values():
            if base.is_dir():
                names.update(p.name for p in base.iterdir() if p.is_dir())
        for name in sorted(names):
            dirs = {c: b / name for c, b in self.bases.items() if (b / name).is_dir()}
            if dirs and self.version is not None:
                RunCgroup(dirs, self.version).remove()
                count += 1
        return count

    def remove_bases(self) -> None:
        """At a clean stop: what is left under our bases, then the bases themselves (one
        ``sandboxd-<hash>`` per controller), so stopped daemons leave no cgroup behind."""
        if self.version is None:
            return
        self.sweep()
        for base in self.bases.values():
            try:
                base.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warn("cannot remove cgroup {base}: {e}", base=base, e=e)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, super options) of every cgroup mount."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        if rfields[0] in ("cgroup", "cgroup2"):
            found.append((fields[4], rfields[0], set(rfields[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """Our cgroup path per v1 controller name, and '' (unified) for v2."""
    out: dict[str, str] = {}
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def detect(instance: str = "sandboxd") -> CgroupSupport:
    """Find a usable cgroup hierarchy and prepare our base cgroups in it."""
    own = _own_paths()
    mounts = _mounts()
    v2 = [m for m in mounts if m[1] == "cgroup2"]
    for mountpoint, _, _ in v2:
        root = Path(mountpoint)
        controllers = set((_read(root / "cgroup.controllers") or "").split())
        if {"memory", "pids"} <= controllers:
            try:
                return _prepare_v2(root, own.get("", "/"), instance)
            except OSError as e:
                reason = f"cgroup v2 at {root} not writable: {e}"
                break
    else:
        reason = "no cgroup v2 hierarchy with memory and pids"
    v1: dict[str, Path] = {}
    for mountpoint, fstype, opts in mounts:
        if fstype != "cgroup":
            continue
        for controller in V1_CONTROLLERS:
            if controller in opts and controller not in v1:
                path = own.get(controller, "/")
                if controller == "cpuacct" and "cpuacct" not in own:
                    path = own.get("cpu,cpuacct", "/")
                v1[controller] = Path(mountpoint) / path.lstrip("/") / instance
    if "memory" in v1 and "pids" in v1:
        try:
            for base in v1.values():
                base.mkdir(parents=True, exist_ok=True)
            return CgroupSupport(1, v1)
        except OSError as e:
            reason += f"; cgroup v1 not writable: {e}"
    else:
        reason += "; no cgroup v1 memory and pids controllers"
    return CgroupSupport(None, {}, reason)


SUPERVISOR = "supervisor"


def _names(path: Path) -> set[str]:
    """Controller names in a ``cgroup.controllers`` or ``cgroup.subtree_control`` file."""
    return {name.lstrip("+") for name in (_read(path) or "").split()}


def _prepare_v2(root: Path, own: str, instance: str) -> CgroupSupport:
    """Make ``<delegated cgroup>/<instance>`` a subtree with memory, pids and cpu.

    cgroup v2 lets no cgroup both hold processes and pass controllers down, so when the cgroup
    we were started in holds processes, they (we among them) move into a ``supervisor`` leaf
    first.  A daemon started later from that leaf (a restart, a daemon started by a process
    that was moved there, say) uses its parent again: the delegated subtree is found once and
    reused, never nested, so a restart finds, and sweeps, what a dead daemon left.  The true
    root (no ``cgroup.type``) holds processes and passes controllers down at once; the root of
    a container's cgroup namespace is not the true root and gets the leaf like any other.
    """
    here = root / own.lstrip("/")
    if (here.name == SUPERVISOR and here.parent != here and root in here.parents
            and "memory" in _names(here.parent / "cgroup.subtree_control")):
        here = here.parent
    wanted = "+memory +pids" + (
        " +cpu" if "cpu" in (_read(here / "cgroup.controllers") or "").split() else ""
    )
    if (here != root or (here / "cgroup.type").exists()) and _pids(here / "cgroup.procs"):
        leaf = here / SUPERVISOR
        leaf.mkdir(exist_ok=True)
        for pid in _pids(here / "cgroup.procs"):
            try:
                _write(leaf / "cgroup.procs", str(pid))
            except OSError:
                pass
    _write(here / "cgroup.subtree_control", wanted)
    base = here / instance
    base.mkdir(exist_ok=True)
    _write(base / "cgroup.subtree_control", wanted)
    return CgroupSupport(2, {"unified": base})


def run_name(kind: str, tag: object) -> str:
    """A run's cgroup name, the one rule: its kind (``build``, ``run``, ``health``,
    ``start-check``), this daemon's pid, and a tag unique within the daemon."""
    return f"{kind}-{os.getpid()}-{tag}"
