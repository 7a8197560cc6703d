"""One request's way through the daemon: wait for a box, build, run, end with one final event."""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sandboxd.boxes import hostfs
from sandboxd.boxes.box import Box
from sandboxd.boxes.pool import NO_CLIENT, BoxPool, QueueFull
from sandboxd.golang import diagnostics, gotest
from sandboxd.golang.modules import MODCACHE_INSIDE, PROXY_INSIDE, ModuleSource
from sandboxd.golang.toolchain import (
    BINARY_INSIDE,
    BUILD_FLAGS,
    GOROOT_INSIDE,
    SOURCE_INSIDE,
    Toolchain,
)
from sandboxd.jobs import verdict
from sandboxd.jobs.bincache import BinaryCache
from sandboxd.jobs.heldbuild import (
    HeldBuild,
    HeldBuilds,
    build_mounts,
    make_job_dir,
    remove_job_dir,
)
from sandboxd.jobs.metrics import Metrics
from sandboxd.jobs.singleflight import SingleFlight
from sandboxd.sandbox import executable
from sandboxd.sandbox.cgroup import CgroupSupport
from sandboxd.sandbox.child import ChildResult, SandboxChild
from sandboxd.sandbox.driver import MIB, RUN_ENV, Driver, Mount, SandboxRun
from sandboxd.status import Phase, Status
from sandboxd.wire.events import StreamDecoder, final_event, output_event
from sandboxd.wire.request import Request

log = Logger()

Emit = Callable[[dict[str, Any]], None]
_job_numbers = itertools.count(1)
BINARY_DIR_INSIDE, BINARY_NAME = os.path.split(BINARY_INSIDE)
MAX_BINARY_BYTES = 256 * MIB
# A run's /prog is unmounted this long after the run: after the reactor has written its final
# event (a delay of 0 would run first, in the next iteration's timed calls).
PROG_REMOVE_DELAY_S = 0.01


@dataclass
class Runtime:
    """Everything a job needs from the daemon, built once at start."""

    reactor: Any
    driver: Driver
    pool: BoxPool
    cgroups: CgroupSupport
    toolchain: Toolchain
    binaries: BinaryCache
    jobs_dir: Path
    toolchains: dict[str, Toolchain] = field(default_factory=dict)  # by name, default included
    modules: ModuleSource | None = None  # None: no third-party modules (the default)
    # Builds in flight, shared between requests of the same build settings (``Job._build``).
    builds_in_flight: SingleFlight[BuildOutcome] = field(default_factory=SingleFlight)
    held_builds: HeldBuilds | None = None  # each ready box's next build, launched ahead
    stats: dict[str, int] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.toolchains.setdefault(self.toolchain.name, self.toolchain)

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n


@dataclass
class HeldRun:
    """A run's sandbox made while the build runs (see ``Job._hold_run``)."""

    child: SandboxChild
    done: defer.Deferred
    prog: Path  # the host directory seen read-only at /prog: the binary goes in there


@dataclass
class BuildOutcome:
    """A finished build, shareable between identical requests."""

    binary: Path | None
    status: Status
    message: str
    diagnostics: str = ""
    result: ChildResult | None = None


class Job:
    """Runs one ``Request``; every path out of it sends exactly one final event."""

    def __init__(self, runtime: Runtime, request: Request, emit: Emit,
                 client: str = NO_CLIENT) -> None:
        self.rt = runtime
        self.request = request
        self.emit = emit
        self.client = client  # whose share of the queue and sessions it takes (pool.py)
        self.number = next(_job_numbers)
        self.phase = Phase.QUEUE
        self.box: Box | None = None
        self.child: SandboxChild | None = None
        self.sent_bytes = 0
        self.finished = False
        self.cancel_reason: str | None = None
        self.paused = False
        self._waiting: defer.Deferred | None = None
        self._decoders = {"stdout": StreamDecoder(), "stderr": StreamDecoder()}
        self.build_ms: int | None = None
        self.cached = False
        self.created = time.monotonic()
        self.queue_ms: int | None = None  # waiting for a box
        self.run_ms: int | None = None
        self.extra_fields: dict[str, Any] = {}
        self.toolchain = runtime.toolchains.get(request.go or "", runtime.toolchain)
        self.testing = request.type == "run" and gotest.wants_tests(request.files, request.test)
        self.tests: gotest.Counter | None = None
        self.renamed: dict[str, str] = {}
        # Interactive stdin that arrived before the program started, and its end.
        self.stdin_pending: list[bytes] = []
        self.stdin_bytes = 0
        self.stdin_eof = False
        # The run's sandbox, set up while the build runs and held until the program is there.
        self.held: HeldRun | None = None

    # -- control from the connection -------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._main())

    def cancel(self, reason: str = "cancelled by the client") -> None:
        if self.finished or self.cancel_reason is not None:
            return
        self.cancel_reason = reason
        if self._waiting is not None:
            self._waiting.cancel()
        if self.child is not None:
            self.child.stop("cancelled")
        if self.held is not None:
            self.held.child.stop("cancelled")

    def write_stdin(self, data: bytes, limit: int) -> str | None:
        """Give the program more input; a reason when it cannot take it, else None."""
        if not self.request.interactive:
            return f"request {self.request.id!r} is not interactive (send \"interactive\": true)"
        if self.stdin_eof:
            return f"the stdin of request {self.request.id!r} is already closed"
        if self.stdin_bytes + len(data) > limit:
            return (f"stdin of request {self.request.id!r} would exceed this server's maximum "
                    f"({limit} bytes); this data was dropped")
        self.stdin_bytes += len(data)
        if self.child is not None and self.phase is Phase.RUN:
            self.child.write_stdin(data)
        else:
            self.stdin_pending.append(data)
        return None

    def close_stdin(self) -> None:
        """No more input: the program reads end of file once it has read what came."""
        if self.stdin_eof:
            return
        self.stdin_eof = True
        if self.child is not None and self.phase is Phase.RUN:
            self.child.close_stdin()

    def pause(self) -> None:
        self.paused = True
        if self.child is not None:
            self.child.pauseProducing()
        if self.held is not None:
            self.held.child.pauseProducing()

    def resume(self) -> None:
        self.paused = False
        if self.child is not None:
            self.child.resumeProducing()
        if self.held is not None:
            self.held.child.resumeProducing()

    # -- the way through -------------------------------------------------------------------

    async def _main(self) -> None:
        try:
            await self._serve()
            if not self.finished:  # a way out that forgot its final event: a bug, answered
                log.error("request {id} ended without a final event", id=self.request.id)
                self._finish(Status.INTERNAL_ERROR, "internal error: no outcome")
        except Exception as e:
            log.failure("request {id} failed", id=self.request.id)
            self._finish(Status.INTERNAL_ERROR, f"internal error: {type(e).__name__}")
        finally:
            await self._let_go()

    async def _let_go(self) -> None:
        """After the final event: the held run ends and the box goes back, whatever fails."""
        try:
            await self._drop_held()
        except Exception:
            log.failure("ending the held run of request {id}", id=self.request.id)
        finally:
            if self.box is not None:
                box, self.box = self.box, None
                try:
                    self.rt.pool.release(box)
                except Exception:
                    log.failure("giving back {box} after request {id}", box=box,
                                id=self.request.id)

    async def _serve(self) -> None:
        req = self.request
        try:
            self._waiting = self.rt.pool.acquire(req.session_id, self.client,
                                                 req.limits.run.disk_mb)
            self.box = await self._waiting
        except QueueFull as e:
            self._finish(Status.QUEUE_FULL, str(e))
            return
        except defer.CancelledError:
            self._finish(Status.CANCELLED, self.cancel_reason or "cancelled")
            return
        finally:
            self._waiting = None
            self.queue_ms = int((time.monotonic() - self.created) * 1000)
        if self.cancel_reason is not None:
            self._finish(Status.CANCELLED, self.cancel_reason)
            return
        self.phase = Phase.BUILD
        if req.type == "fmt":
            await self._fmt()
            return
        if req.type == "vet":
            await self._vet()
            return
        build = await self._build()
        if build.diagnostics:
            self._send("stderr", build.diagnostics.encode())
        if build.binary is None:
            self._finish_from(build.status, build.message, build.result)
            return
        if self.cancel_reason is not None:
            self._finish(Status.CANCELLED, self.cancel_reason)
            return
        try:  # whatever the cache holds: nothing but a program of this machine is executed
            executable.check(build.binary)
        except (OSError, executable.NotAProgram) as e:
            self._finish(Status.INTERNAL_ERROR, f"the built program cannot be run ({e})")
            return
        self.phase = Phase.RUN
        await self._run(build.binary)

    async def _build(self) -> BuildOutcome:
        """The program, built here or by an identical request's build in flight.

        A build is shared only between requests whose every build setting is the same (the
        in-flight key: files, toolchain, flags, build limits, output limit), and only when it
        built or failed to compile; a build ended by a limit, a cancel or a failure of the
        sandbox is its own request's answer, and the next request in line builds for itself.
        Waiting for another request's build can be cancelled like any wait.
        """
        req, rt, tc = self.request, self.rt, self.toolchain
        files = dict(req.files)
        files["go.mod"] = tc.with_go_line(files["go.mod"]) if "go.mod" in files else tc.go_mod()
        flags: tuple[str, ...] = BUILD_FLAGS
        if self.testing:
            files, self.renamed = gotest.as_test_package(files)
            flags = (*BUILD_FLAGS, "test")
        key = BinaryCache.key(files, tc.ident, flags, req.limits.build)
        leading = False

        def lead() -> defer.Deferred[BuildOutcome]:
            nonlocal leading
            leading = True
            self._waiting = None  # building now, not waiting: a cancel stops the build itself
            return defer.ensureDeferred(self._lead_build(files, key))

        outcome = rt.builds_in_flight.run((key, req.limits.output_bytes), lead, _shareable)
        if not leading:
            self._waiting = outcome
        try:
            built = await outcome
        except defer.CancelledError:
            return BuildOutcome(None, Status.CANCELLED, self.cancel_reason or "cancelled")
        finally:
            self._waiting = None
        if leading:
            return built
        rt.count("cache_shared")
        if built.binary is not None:
            return BuildOutcome(built.binary, Status.OK, "")
        return built

    async def _lead_build(self, files: dict[str, bytes], key: str) -> BuildOutcome:
        rt = self.rt
        cached = rt.binaries.get(key)
        if cached is not None:
            self.cached = True
            rt.count("cache_hits")
            return BuildOutcome(cached, Status.OK, "")
        rt.count("cache_misses")
        return await self._compile(files, key)

    def _make_job_dir(self) -> Path:
        """The build's own directory (src, out, mods), a tmpfs of the build's ``disk_mb``."""
        job_dir = self.rt.jobs_dir / str(self.number)
        make_job_dir(job_dir, self.request.limits.build.disk_mb)
        return job_dir

    def _claim_held_build(self) -> HeldBuild | None:
        """The box's build launched ahead, when this request builds just like it; otherwise
        it stays with the box for a later request."""
        held = self.rt.held_builds
        if held is None or self.box is None or not (
            self.request.type == "run" and not self.testing and self.rt.modules is None
            and self.toolchain is held.toolchain and self.request.limits.build == held.limits
        ):
            return None
        return held.take(self.box)

    def _build_run(self, job_dir: Path, files: dict[str, bytes], argv: list[str],
                   download: bool = False) -> SandboxRun:
        """A build-phase run of the toolchain over ``files`` at /src, /out writable.

        With modules allowed, the module cache is mounted too (writable only for the
        ``download`` step) and the go command works on a copy of go.mod in /out.
        """
        box, tc, modules = self.box, self.toolchain, self.rt.modules
        assert box is not None
        src, out = job_dir / "src", job_dir / "out"
        if not src.exists():
            hostfs.make_private_dir(src, 0, 0, 0o755)
            hostfs.write_tree(src, files)
            hostfs.make_private_dir(out, box.uid, box.gid, 0o700)
        env = tc.build_env()
        mounts = build_mounts(tc, job_dir)
        if modules is not None:
            if not (out / "go.mod").exists():
                for name in ("go.mod", "go.sum"):  # before any box process ran in /out
                    if name in files:
                        hostfs.write_tree(out, {name: files[name]})
                        os.chown(out / name, box.uid, box.gid)
            if modules.cache is not None:
                mounts.append(Mount(modules.cache, MODCACHE_INSIDE))
            else:
                mods = job_dir / "mods"
                if not mods.exists():
                    hostfs.make_private_dir(mods, box.uid, box.gid, 0o700)
                mounts.append(Mount(mods, MODCACHE_INSIDE, writable=download))
                if download and modules.proxy_dir is not None:
                    mounts.append(Mount(modules.proxy_dir, PROXY_INSIDE))
            env.update(modules.download_env() if download else modules.build_env())
        return SandboxRun(
            phase=Phase.BUILD,
            box=box,
            argv=argv,
            env=env,
            cwd=SOURCE_INSIDE,
            limits=self.request.limits.build,
            mounts=mounts,
            with_workspace=False,
            scratch=job_dir,
            network=download and modules is not None and modules.network,
        )

    async def _download(self, job_dir: Path, files: dict[str, bytes]) -> BuildOutcome | None:
        """The module download step (``--goproxy``); an outcome only when it failed."""
        if self.rt.modules is None or not self.rt.modules.downloads:
            return None
        run = self._build_run(job_dir, files, self.toolchain.download_argv(), download=True)
        collected, collect = _collector(self.request.limits.output_bytes)
        result = await self._child(run, collect)
        return self._build_failure(result, collected, "the modules could not be downloaded")

    def _build_failure(
        self, result: ChildResult, collected: list[bytes], failed: str
    ) -> BuildOutcome | None:
        """How a build-phase step failed (sandbox, limit, non-zero exit), or None."""
        text = b"".join(collected).decode("utf-8", "replace")
        if result.report.failed:
            return BuildOutcome(None, Status.INTERNAL_ERROR, verdict.sandbox_failed(result),
                                result=result)
        limit = (self._stopped(result, Phase.BUILD)
                 or verdict.build_limit(result, text, self.request.limits.build))
        if limit is not None:
            return BuildOutcome(None, limit.status, limit.message,
                                diagnostics=diagnostics.clean(text), result=result)
        if result.report.exit_code != 0:
            return BuildOutcome(None, Status.COMPILE_ERROR, failed,
                                diagnostics=diagnostics.clean(text, self.renamed), result=result)
        return None

    async def _compile(self, files: dict[str, bytes], key: str) -> BuildOutcome:
        rt = self.rt
        held = self._claim_held_build()
        job_dir = held.job_dir if held is not None else self._make_job_dir()
        try:
            collected, collect = _collector(self.request.limits.output_bytes)
            if held is not None:  # launched ahead with these very settings: let it go
                self.child = held.child
                if self.cancel_reason is not None:
                    held.child.stopped_for = "cancelled"
                building = held.start(files, collect, self.paused)
                building.addBoth(self._child_ended)
            else:
                argv = (self.toolchain.test_argv() if self.testing
                        else self.toolchain.build_argv())
                failed = await self._download(job_dir, files)
                if failed is not None:
                    return failed
                run = self._build_run(job_dir, files, argv)
                building = defer.ensureDeferred(self._child(run, collect))  # spawned by now
            out = job_dir / "out"
            self._hold_run()  # set up while the build runs, not before it starts
            result = await building
            rt.metrics.build_seconds.observe(result.wall_ms / 1000)
            failure = self._build_failure(result, collected, "the program did not compile")
            if failure is not None:
                return failure
            self.build_ms = result.wall_ms
            try:
                fd, size = hostfs.open_box_file(out, "main", MAX_BINARY_BYTES)
                try:
                    executable.check_fd(fd)
                    binary = rt.binaries.put_file(key, fd, size)
                finally:
                    os.close(fd)
            except executable.NotAProgram as e:
                if e.archive:  # a package that is not main: what ``go run`` says of it
                    said = f"package {_module_path(files)} is not a main package"
                    return BuildOutcome(None, Status.COMPILE_ERROR, said,
                                        diagnostics=said + "\n")
                return BuildOutcome(None, Status.INTERNAL_ERROR,
                                    f"the build left no usable program ({e})", result=result)
            except OSError as e:
                return BuildOutcome(None, Status.INTERNAL_ERROR,
                                    f"the build left no usable program ({e.strerror})",
                                    result=result)
            return BuildOutcome(binary, Status.OK, "", result=result)
        finally:
            # Unmounting and removing it is not on the request's path: the run starts first.
            rt.reactor.callLater(0, remove_job_dir, job_dir)

    async def _fmt(self) -> None:
        """gofmt parses untrusted text, so it runs in the box like a build."""
        tc, box = self.toolchain, self.box
        assert box is not None
        run = SandboxRun(
            phase=Phase.BUILD, box=box, argv=tc.gofmt_argv(), env=tc.build_env(), cwd="/tmp",
            limits=self.request.limits.build, mounts=[Mount(tc.goroot, GOROOT_INSIDE)],
            with_workspace=False,
        )
        streams: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        size = [0]
        cap = self.rt_source_cap()

        def collect(stream: str, data: bytes, timestamp: str) -> int:
            room = max(0, cap - size[0])
            streams[stream].append(data[:room])
            size[0] += len(data)
            return min(len(data), room)

        result = await self._child(run, collect, self.request.files["main.go"])
        if self._finished_by_stop(result, Phase.BUILD):
            return
        if result.report.exit_code != 0:
            errors = diagnostics.clean(b"".join(streams["stderr"]).decode("utf-8", "replace"))
            self._send("stderr", errors.encode())
            self._finish(Status.COMPILE_ERROR, "gofmt found syntax errors", result)
            return
        code = b"".join(streams["stdout"]).decode("utf-8", "replace")
        self._finish(Status.OK, "formatted", result, code=code,
                     changed=code.encode() != self.request.files["main.go"])

    def rt_source_cap(self) -> int:
        """Formatted source is about as long as the source; allow generous growth."""
        return max(self.request.limits.output_bytes, 4 * len(self.request.files["main.go"]))

    async def _vet(self) -> None:
        """``go vet`` over the sources; findings stream as cleaned stderr lines."""
        files, tc = dict(self.request.files), self.toolchain
        files["go.mod"] = tc.with_go_line(files["go.mod"]) if "go.mod" in files else tc.go_mod()
        job_dir = self._make_job_dir()
        lines = _LineCleaner(self)
        try:
            failed = await self._download(job_dir, files)
            if failed is not None:
                if failed.diagnostics:
                    self._send("stderr", failed.diagnostics.encode())
                self._finish(failed.status, failed.message, failed.result)
                return
            run = self._build_run(job_dir, files, self.toolchain.vet_argv())
            result = await self._child(run, lines.feed)
        finally:
            hostfs.remove_scratch_dir(job_dir)
        lines.flush()
        if self._finished_by_stop(result, Phase.BUILD):
            return
        if result.report.exit_code == 0:
            self._finish(Status.OK, "go vet found nothing", result, vet_findings=0)
        elif lines.type_errors or not lines.findings:
            self._finish(Status.COMPILE_ERROR, "the program did not compile", result)
        else:
            self._finish(Status.VET_ISSUES,
                         f"go vet found {verdict.plural(lines.findings, 'issue')}", result,
                         vet_findings=lines.findings)

    def _stopped(self, result: ChildResult, phase: Phase) -> verdict.Verdict | None:
        return verdict.stopped(result, phase, self.request.limits.phase(phase),
                               self.request.limits.output_bytes,
                               self.rt.cgroups.version is not None, self.cancel_reason)

    def _finished_by_stop(self, result: ChildResult, phase: Phase) -> bool:
        """End the request when the sandbox failed or a limit (or cancel) stopped the phase."""
        stop = self._stopped(result, phase)
        if stop is not None:
            self._finish(stop.status, stop.message, result)
            return True
        return False

    def _run_argv(self) -> list[str]:
        argv = [BINARY_INSIDE]
        if self.testing:
            argv += gotest.RUN_FLAGS
        return argv

    async def _run(self, binary: Path) -> None:
        rt, box = self.rt, self.box
        assert box is not None
        limits = self.request.limits.run
        if self.testing:
            self.tests = gotest.Counter()
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
        if self._finished_by_stop(result, Phase.RUN):
            return
        tests = (self.tests.passed, self.tests.failed) if self.tests is not None else None
        end = verdict.program_end(result, limits, tests)
        self.extra_fields.update(end.counts)
        self._finish(end.status, end.message, result, **end.fields)

    # -- the run's sandbox, made ahead -----------------------------------------------------

    def _hold_run(self) -> None:
        """Set the run up now, held, so that its start-up overlaps the build instead of
        following it: the whole sandbox (launcher, namespaces, mounts, cgroup: ~10 ms) where
        the driver can hold one (bubblewrap), else the launcher and its cgroup join (isolate:
        ~6 ms on cgroup v1).  Its program directory gets the binary once built;
        ``_release_held`` lets it start.  Only where a cgroup (not the box uid) bounds each
        phase apart."""
        rt, box = self.rt, self.box
        if (box is None or rt.cgroups.version is None or rt.driver.own_cgroups
                or self.request.interactive):
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
        self.rt.reactor.callLater(PROG_REMOVE_DELAY_S, remove_job_dir, prog)

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

    def _spawn(self, run: SandboxRun, sink, stdin: bytes | None) -> tuple[SandboxChild,
                                                                            defer.Deferred]:
        cgroup = None
        if self.rt.cgroups.version is not None and not self.rt.driver.own_cgroups:
            cgroup = self.rt.cgroups.create(f"{run.phase}-{os.getpid()}-{self.number}",
                                            run.limits)
        run.cgroup = cgroup
        child = SandboxChild(self.rt.reactor, self.rt.driver, run, sink, stdin)
        if self.paused:
            child.pauseProducing()
        if self.cancel_reason is not None:
            child.stopped_for = "cancelled"
        return child, child.start()

    def _child_ended(self, result: Any) -> Any:
        self.child = None
        return result

    async def _child(self, run: SandboxRun, sink, stdin: bytes | None = b"") -> ChildResult:
        self.child, started = self._spawn(run, sink, stdin)
        try:
            if stdin is None:
                for data in self.stdin_pending:
                    self.child.write_stdin(data)
                self.stdin_pending.clear()
                if self.stdin_eof:
                    self.child.close_stdin()
            return await started
        finally:
            self.child = None

    # -- output ----------------------------------------------------------------------------

    def _stream(self, stream: str, data: bytes, timestamp: str) -> int:
        if self.tests is not None and stream == "stdout":
            self.tests.feed(data)
        room = self.request.limits.output_bytes - self.sent_bytes
        take = data[: max(0, room)]
        if take:
            self.sent_bytes += len(take)
            text, raw = self._decoders[stream].feed(take)
            if text or raw:
                self.emit(output_event(self.request.id, stream, self.phase, text, raw, timestamp))
        return len(take)

    def _send(self, stream: str, data: bytes) -> None:
        self._stream(stream, data, "")
        self._flush()

    def _flush(self) -> None:
        for stream, decoder in self._decoders.items():
            text, raw = decoder.flush()
            if text or raw:
                self.emit(output_event(self.request.id, stream, self.phase, text, raw))

    # -- the end ---------------------------------------------------------------------------

    def _finish_from(self, status: Status, message: str, result: ChildResult | None) -> None:
        self._finish(status, message, result)

    def _finish(
        self, status: Status, message: str, result: ChildResult | None = None, **extra: Any
    ) -> None:
        if self.finished:
            return
        self.finished = True
        fields: dict[str, Any] = {}
        if result is not None:
            fields.update(
                exit_code=result.report.exit_code if result.report.signal is None else None,
                time_ms=result.cpu_ms,
                wall_ms=result.wall_ms,
                memory_kb=result.memory_kb,
            )
        fields["build_ms"] = self.build_ms
        fields["cached"] = self.cached
        fields["output_bytes"] = self.sent_bytes
        if self.request.type in ("run", "vet", "fmt"):
            fields["go"] = self.toolchain.version
        fields.update(self.extra_fields)
        if self.request.session_id is not None:
            fields["session_id"] = self.request.session_id
        fields.update(extra)
        try:  # bookkeeping that fails must not cost the client its final event
            self.rt.count(f"status_{status}")
            self.rt.metrics.request_ended(str(status), self.sent_bytes)
            log.info(
                "request {id} session={session} box={box} status={status} phase={phase} "
                "queue_ms={queue_ms} build_ms={build_ms} cached={cached} run_ms={run_ms} "
                "bytes={bytes}",
                id=_loggable(self.request.id), session=self.request.session_id,
                box=self.box.number if self.box else None, status=str(status),
                phase=str(self.phase), queue_ms=self.queue_ms, build_ms=self.build_ms,
                cached=self.cached, run_ms=self.run_ms, bytes=self.sent_bytes,
            )
        except Exception:
            log.failure("accounting for request {id}", id=self.request.id)
        self.emit(final_event(self.request.id, status, message, self.phase, **fields))


def _shareable(outcome: BuildOutcome) -> bool:
    """What another request of the same build settings may take as its own build's outcome: a
    program, or a compile error.  Never a limit, a cancel, or a failure of the sandbox: those
    depend on the moment and the request, and the next one in line builds for itself."""
    return outcome.binary is not None or outcome.status is Status.COMPILE_ERROR


_MODULE_LINE = re.compile(rb"^\s*module\s+\"?([^\s\"/]+[^\s\"]*)", re.MULTILINE)


def _module_path(files: dict[str, bytes]) -> str:
    """The main module's path, as the go command names the package in the top directory."""
    m = _MODULE_LINE.search(files.get("go.mod", b""))
    return m.group(1).decode("utf-8", "replace") if m else "command-line-arguments"


def _loggable(request_id: str) -> str:
    """A client's request id for the one-line-per-request log: as it is when plain, quoted
    (repr) when it holds a space, '=', a quote or a backslash, so that an id cannot pass for
    more fields of the line ("x status=ok").  Ids are printable (request.py): no newline."""
    if any(c.isspace() or c in "='\"\\" for c in request_id):
        return repr(request_id)
    return request_id


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


def _collector(limit: int) -> tuple[list[bytes], Callable[[str, bytes, str], int]]:
    """A sink that keeps a tool's output up to ``limit`` bytes and 64 KiB more: the text is
    cleaned before ``limit`` applies, and a cut fragment would clean away to nothing."""
    cap = limit + 64 * 1024
    collected: list[bytes] = []
    size = [0]

    def collect(stream: str, data: bytes, timestamp: str) -> int:
        room = max(0, cap - size[0])
        collected.append(data[:room])
        size[0] += len(data)
        return len(data)

    return collected, collect


class _LineCleaner:
    """Streams a tool's output line by line, cleaned, and counts the findings."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.partial = b""
        self.findings = 0
        self.type_errors = False

    def feed(self, stream: str, data: bytes, timestamp: str) -> int:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > 65536:
            lines.append(self.partial)
            self.partial = b""
        for line in lines:
            self._line(line.decode("utf-8", "replace"))
        return len(data) if self.job.sent_bytes < self.job.request.limits.output_bytes else 0

    def flush(self) -> None:
        if self.partial:
            self._line(self.partial.decode("utf-8", "replace"))
            self.partial = b""

    def _line(self, line: str) -> None:
        if diagnostics.is_type_error(line):
            self.type_errors = True
        cleaned = diagnostics.clean(line)
        if not cleaned:
            return
        if _FINDING.match(cleaned):
            self.findings += 1
        self.job._send("stderr", cleaned.encode())


_FINDING = re.compile(r"^[\w./+-]+\.go:\d+:\d+: ")
