"""A job's children: each sandboxed process tree it spawns, with its cgroup, paused or
cancelled as the job is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sandboxd.sandbox import cgroup as cgroup_names
from sandboxd.sandbox.child import ChildResult, SandboxChild
from sandboxd.sandbox.driver import SandboxRun

log = Logger()


class Children:
    """Spawns and awaits the job's children (mixed into ``Job``).  ``child_factory`` makes
    each (a ``SandboxChild``; unit tests put a fake there, see tests/unit/fakechild.py)."""

    child_factory: Callable[..., SandboxChild] = SandboxChild
    _cgroups_made: dict[str, int] | None = None  # per phase: the cgroups made so far

    def _spawn(self, run: SandboxRun, sink, stdin: bytes | None) -> tuple[SandboxChild,
                                                                            defer.Deferred]:
        cgroup = None
        if self.rt.cgroups.version is not None and not self.rt.driver.own_cgroups:
            cgroup = self.rt.cgroups.create(self._cgroup_name(run), run.limits)
        run.cgroup = cgroup
        child = self.child_factory(self.rt.reactor, self.rt.driver, run, sink, stdin)
        if self.paused and self.request.cases is None:  # a judged case's output is not sent
            child.pauseProducing()
        if self.cancel_reason is not None:
            child.stopped_for = "cancelled"
        return child, child.start()

    def _cgroup_name(self, run: SandboxRun) -> str:
        """A new cgroup's name for each child: the job's number, and for a phase's later
        children (judged cases) their count, so that none reuses an earlier one's cgroup and
        its CPU time and memory peak (one whose removal failed is left for the cleanup)."""
        if self._cgroups_made is None:
            self._cgroups_made = {}
        made = self._cgroups_made
        n = made[run.phase] = made.get(run.phase, 0) + 1
        tag = self.number if n == 1 else f"{self.number}-{n}"
        return cgroup_names.run_name(str(run.phase), tag)

    def _child_ended(self, result: Any) -> Any:
        self.child = None
        return result

    async def _child(self, run: SandboxRun, sink, stdin: bytes | None = b"") -> ChildResult:
        self.child, started = self._spawn(run, sink, stdin)
        try:
            if stdin is None:
                self.stdin.hand_over(self.child)
            return await started
        finally:
            self.child = None
