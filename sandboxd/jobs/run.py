"""The run phase: the program in its box, its sandbox made ahead while the build runs (``HeldRun``);
it returns the child's result and its verdict, it never ends the request."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from sandboxd.boxes import hostfs
from sandboxd.golang import bench, gotest, testjson
from sandboxd.golang.toolchain import (
    BINARY_INSIDE,
)
from sandboxd.jobs import verdict
from sandboxd.jobs.build import MAX_BINARY_BYTES
from sandboxd.jobs.heldbuild import (
    remove_job_dir,
)
from sandboxd.jobs.testrun import BenchResults, TestEvents
from sandboxd.sandbox.child import ChildResult, SandboxChild
from sandboxd.sandbox.driver import RUN_ENV, Mount, SandboxRun
from sandboxd.status import Phase

log = Logger()

BINARY_DIR_INSIDE, BINARY_NAME = os.path.split(BINARY_INSIDE)
# A run's /prog is unmounted this long after the run: after the reactor has written its final
# event (a delay of 0 would run first, in the next iteration's timed calls).
PROG_REMOVE_DELAY_S = 0.01


@dataclass
class HeldRun:
    """A run's sandbox made while the build runs (see ``Job._hold_run``)."""

    child: SandboxChild
    done: defer.Deferred
    prog: Path  # the host directory seen read-only at /prog: the binary goes in there


class RunPhase:
    """The run phase of a ``Job`` (mixed into it): returns a verdict and the child's result."""

    def _run_argv(self) -> list[str]:
        argv = [BINARY_INSIDE]
        options = self.request.options
        if self.testing and options.bench is not None:
            argv += bench.run_flags(options.bench, options.benchtime)
        elif self.testing and options.test_json:
            argv += testjson.RUN_FLAGS
        elif self.testing:
            argv += gotest.RUN_FLAGS
        return argv

    async def _run(self, binary: Path) -> verdict.Ending:
        rt, box = self.rt, self.box
        assert box is not None
        limits = self.request.limits.run
        if self.testing:
            self.tests = gotest.Counter()
            if self.request.options.bench is not None:
                self.test_view = BenchResults(self.output)
            elif self.request.options.test_json:
                self.test_view = TestEvents(self.request.id, self.output, self.emit)
        if self.held is not None:
            result = await self._release_held(binary)
        else:
            rt.driver.resize_box(box, limits.disk_mb)
            prog = self._make_prog_dir()
            try:
                _place_binary(binary, prog)
                run = SandboxRun(
                    phase=Phase.RUN,
                    box=box,
                    argv=self._run_argv(),
                    env=dict(RUN_ENV),
                    cwd="/box",
                    limits=limits,
                    mounts=[Mount(prog, BINARY_DIR_INSIDE)],
                    with_workspace=True,
                )
                stdin = None if self.request.interactive else self.request.stdin
                result = await self._child(run, self._stream, stdin)
            finally:
                self._remove_prog_dir(prog)
        self.run_ms = result.wall_ms
        rt.metrics.run_seconds.observe(result.wall_ms / 1000)
        self._flush()
        view = self.test_view
        if view is not None:  # its last events before the final one; results so far
            view.close()
            self.extra_fields.update(view.fields())
        tests = (self.tests.passed, self.tests.failed) if self.tests is not None else None
        if isinstance(view, TestEvents):  # every test and subtest, by its own result
            tests = view.counts()
        elif isinstance(view, BenchResults):  # benchmarks only: the program's own end
            tests = None
        stop = self._stopped(result, Phase.RUN)
        if stop is not None:
            self.extra_fields.update(verdict.test_counts(tests))  # the tests' results so far
            return stop, result
        end = verdict.program_end(result, limits, tests)
        self.extra_fields.update(end.counts)
        return end, result

    def _hold_run(self) -> None:
        """Set the run up now, held, so that its start-up overlaps the build instead of
        following it: the whole sandbox (launcher, namespaces, mounts, cgroup: ~10 ms) where
        the driver can hold one (bubblewrap), else the launcher and its cgroup join (isolate:
        ~6 ms on cgroup v1).  Its program directory gets the binary once built;
        ``_release_held`` lets it start.  Only where a cgroup (not the box uid) bounds each
        phase apart."""
        rt, box = self.rt, self.box
        if (box is None or rt.cgroups.version is None or rt.driver.own_cgroups
                or self.request.interactive or self.request.cases is not None):
            return
        whole = rt.driver.can_hold
        prog = self._make_prog_dir()
        limits = self.request.limits.run
        try:
            rt.driver.resize_box(box, limits.disk_mb)
            run = SandboxRun(
                phase=Phase.RUN, box=box, argv=self._run_argv(), env=dict(RUN_ENV),
                cwd="/box", limits=limits, mounts=[Mount(prog, BINARY_DIR_INSIDE)],
                with_workspace=True, hold=whole, hold_launcher=not whole, tag="held",
            )
            child, done = self._spawn(run, self._stream, self.request.stdin)
        except Exception:
            log.failure("holding the run of request {id}; it starts after the build",
                        id=self.request.id)
            hostfs.remove_scratch_dir(prog)
            return
        if child.transport is None:  # the spawn failed: run the usual way after the build
            done.addErrback(lambda f: log.failure("holding the run", f))
            hostfs.remove_scratch_dir(prog)
            return
        self.held = HeldRun(child, done, prog)

    def _make_prog_dir(self) -> Path:
        """The run's /prog: a tmpfs of its own, not a bind of the binary cache's file.  A
        bind mount shows, in the box's /proc/self/mountinfo, its source's path within the
        source's filesystem (here the state directory's); a daemon-mounted tmpfs shows "/"."""
        prog = self.rt.jobs_dir / f"{self.number}.prog"
        hostfs.make_scratch_dir(prog, MAX_BINARY_BYTES, 16)
        return prog

    def _remove_prog_dir(self, prog: Path) -> None:
        """After the run: its unmount (~3 ms here) waits until the final event is written."""
        self.rt.later(PROG_REMOVE_DELAY_S, remove_job_dir, prog)

    async def _release_held(self, binary: Path) -> ChildResult:
        held = self.held
        assert held is not None
        _place_binary(binary, held.prog)
        self.held = None
        self.child = held.child
        try:
            if self.paused:
                held.child.pauseProducing()
            held.child.release()
            return await held.done
        finally:
            self.child = None
            self._remove_prog_dir(held.prog)

    async def _drop_held(self) -> None:
        """The build failed or the request ended early: end the held sandbox unused."""
        held, self.held = self.held, None
        if held is None:
            return
        try:
            held.child.abandon()  # its own processes only: the box may serve another by now
            await held.done
        except Exception:
            log.failure("ending a held run")
        finally:
            self._remove_prog_dir(held.prog)


def _place_binary(binary: Path, prog: Path) -> None:
    """A root-owned, read-only copy of the cached ``binary`` as ``prog``/main (sendfile:
    ~1 ms for a 2 MB program)."""
    with open(binary, "rb") as f:
        fd = os.open(prog / BINARY_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | hostfs.O_SAFE,
                     0o555)
        try:
            hostfs.copy_fd(f.fileno(), fd, os.fstat(f.fileno()).st_size)
        finally:
            os.close(fd)
