"""A running child's limits as the daemon watches them: its wall time (a timer) and its CPU
time (polled from its cgroup, or where there is none from its box uid's processes, whose memory
summed is watched then too).  Passing one calls ``stop`` with the limit's name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sandboxd.sandbox import boxprocs
from sandboxd.sandbox.driver import SandboxRun

log = Logger()

CPU_POLL_S = 0.05
UID_POLL_S = 0.1


class LimitWatch:
    """Watches one run's wall, CPU and (without a cgroup) memory from ``arm()`` until
    ``disarm()``; ``cpu_seen`` (ns) and ``memory_seen`` (bytes) are the most it saw."""

    def __init__(self, clock: IReactorTime, run: SandboxRun, stop: Callable[[str], None],
                 stopping: Callable[[], bool]) -> None:
        self.clock = clock
        self.run = run
        self.stop = stop
        self.stopping = stopping
        self.cpu_seen = 0
        self.memory_seen = 0  # bytes, hosts without cgroups
        self._timer: Any = None
        self._poll: LoopingCall | None = None
        self._source: Callable[[], int | None] = lambda: None

    def arm(self) -> None:
        """Start the wall-time timer and the CPU/memory polling."""
        self._timer = self.clock.callLater(self.run.limits.wall_ms / 1000, self.stop, "wall")
        cg = self.run.cgroup
        if cg is not None and cg.cpu_ns() is not None:
            self._source = lambda: self._cgroup_usage(cg)
            interval = CPU_POLL_S
        else:
            # No cgroup: the box's uid finds its processes (see sandboxd.sandbox.boxprocs).
            uid = self.run.box.uid
            self._source = lambda: self._uid_usage(uid)
            interval = UID_POLL_S
        self._poll = LoopingCall(self._check_cpu)
        self._poll.clock = self.clock
        self._poll.start(interval, now=False).addErrback(lambda f: log.failure("cpu poll", f))

    def disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._poll is not None and self._poll.running:
            self._poll.stop()

    def _cgroup_usage(self, cg: Any) -> int | None:
        """CPU ns of the box's cgroup; also ends the box at its first OOM kill (the kernel
        kills one process; the memory limit ends them all)."""
        if cg.oom_killed(certain=True):
            self.stop("memory")
        return cg.cpu_ns()

    def _uid_usage(self, uid: int) -> int:
        """CPU ns of the box uid's processes; also stops the box when their memory summed
        passes the limit (RLIMIT_AS alone bounds each process, not the box)."""
        cpu, resident = boxprocs.usage(uid)
        self.memory_seen = max(self.memory_seen, resident)
        if resident > self.run.limits.memory_mb * 1024 * 1024:
            self.stop("memory")
        return cpu

    def _check_cpu(self) -> None:
        if self.stopping():
            return  # stopping already; the poll ends with the run
        used = self._source()
        if used is not None:
            self.cpu_seen = max(self.cpu_seen, used)
            if used > self.run.limits.cpu_ms * 1_000_000:
                self.stop("cpu")
