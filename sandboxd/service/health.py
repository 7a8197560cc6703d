"""The health check behind ``/healthz``: can a box run a program right now?

Answered by doing it: a spare box (its own number, outside every request's) runs ``/bin/true``
through the same driver, launcher, limits and cgroup as a request's run.  That catches what a
look at the daemon's state cannot: a broken sandbox tool, a full disk, a cgroup that cannot be
made, isolate's box ids taken by someone else.  The answer is kept for ``TTL_S`` seconds and
concurrent checks share one probe, so a busy load balancer cannot make the daemon spawn
processes at will.  While the daemon shuts down the answer is 503 without a probe.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger

from sandboxd.jobs.singleflight import SingleFlight
from sandboxd.sandbox import cgroup as cgroup_names
from sandboxd.sandbox.child import SandboxChild
from sandboxd.sandbox.driver import RUN_ENV, SandboxRun
from sandboxd.status import Phase

if TYPE_CHECKING:
    from sandboxd.jobs.runtime import Runtime
    from sandboxd.limits import PhaseLimits

log = Logger()

TTL_S = 5.0
PROBE_WALL_MS = 10_000
PROBE_ARGV = ["/bin/true"]
_probe_numbers = itertools.count(1)


class HealthCheck:
    """``check()``: can a box run a program right now.  It reads what it needs, no more:
    the runtime (its reactor, pool, driver and cgroups), the run limits a probe takes, and
    whether the daemon is stopping."""

    def __init__(self, runtime: Runtime, limits: PhaseLimits, stopping: Callable[[], bool],
                 ttl_s: float = TTL_S) -> None:
        self.rt = runtime
        self.limits = dataclasses.replace(limits, wall_ms=PROBE_WALL_MS)
        self.stopping = stopping
        self.ttl_s = ttl_s
        self._last: tuple[float, tuple[bool, str]] | None = None
        self._probes: SingleFlight[tuple[bool, str]] = SingleFlight()  # one probe at a time
        self.probe: defer.Deferred[tuple[bool, str]] | None = None  # the one running

    def check(self) -> defer.Deferred[tuple[bool, str]]:
        """(healthy, why); a check that comes while a probe runs gets that probe's answer."""
        if self.stopping():
            return defer.succeed((False, "the server is shutting down"))
        now = self.rt.reactor.seconds()
        if self._last is not None and now - self._last[0] < self.ttl_s:
            return defer.succeed(self._last[1])
        return self._probes.run("probe", self._probe_once)

    def _probe_once(self) -> defer.Deferred[tuple[bool, str]]:
        probe = self.probe = defer.ensureDeferred(self._probe()).addBoth(self._answer)
        probe.addBoth(self._probe_ended, probe)
        return probe

    def _probe_ended(self, result: object, probe: defer.Deferred) -> object:
        if self.probe is probe:
            self.probe = None
        return result

    def _answer(self, verdict: object) -> tuple[bool, str]:
        if not isinstance(verdict, tuple):
            log.failure("health probe", verdict)
            verdict = (False, "the health probe failed unexpectedly")
        self._last = (self.rt.reactor.seconds(), verdict)
        return verdict

    async def _probe(self) -> tuple[bool, str]:
        rt = self.rt
        pool, limits = rt.pool, self.limits
        try:
            box = pool.spare_box()
        except Exception as e:
            return False, f"cannot make a box: {e}"
        cgroup = None
        try:
            if rt.cgroups.version is not None:
                cgroup = rt.cgroups.create(cgroup_names.run_name("health", next(_probe_numbers)),
                                           limits)
            run = SandboxRun(phase=Phase.RUN, box=box, argv=PROBE_ARGV, env=dict(RUN_ENV),
                             cwd="/box", limits=limits, cgroup=cgroup, with_workspace=True)
            result = await SandboxChild(rt.reactor, rt.driver, run,
                                        lambda stream, data, ts: len(data)).start()
        except Exception as e:
            return False, f"cannot start a sandboxed program: {e}"
        finally:
            pool.drop_box(box)
        report = result.report
        if report.failed:
            return False, f"the sandbox failed: {report.message}"
        if report.signal is not None or report.exit_code != 0:
            tail = result.stderr_tail.decode("utf-8", "replace").strip()[-300:]
            return False, (f"a sandboxed {PROBE_ARGV[0]} ended with exit code "
                           f"{report.exit_code}, signal {report.signal}: {tail}")
        return True, f"a box ran {PROBE_ARGV[0]} in {result.wall_ms} ms ({rt.driver.name})"
