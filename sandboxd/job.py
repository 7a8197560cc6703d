"""One request's way through the daemon: wait for a box, build, run, end with one final event."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sandboxd import diagnostics, hostfs
from sandboxd.bincache import BinaryCache
from sandboxd.box import Box
from sandboxd.cgroup import CgroupSupport
from sandboxd.child import SIGNAL_NAMES, ChildResult, SandboxChild
from sandboxd.drivers.base import MIB, RUN_ENV, Driver, Mount, SandboxRun
from sandboxd.events import StreamDecoder, final_event, output_event
from sandboxd.metrics import Metrics
from sandboxd.pool import BoxPool, QueueFull
from sandboxd.request import Request
from sandboxd.status import Phase, Status
from sandboxd.toolchain import (
    BINARY_INSIDE,
    BUILD_FLAGS,
    GOCACHE_INSIDE,
    GOROOT_INSIDE,
    OUTPUT_INSIDE,
    SOURCE_INSIDE,
    Toolchain,
)

log = Logger()

Emit = Callable[[dict[str, Any]], None]
_job_numbers = itertools.count(1)
MAX_BINARY_BYTES = 256 * MIB


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
    builds_in_flight: dict[str, defer.Deferred] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n


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

    def __init__(self, runtime: Runtime, request: Request, emit: Emit) -> None:
        self.rt = runtime
        self.request = request
        self.emit = emit
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

    def pause(self) -> None:
        self.paused = True
        if self.child is not None:
            self.child.pauseProducing()

    def resume(self) -> None:
        self.paused = False
        if self.child is not None:
            self.child.resumeProducing()

    # -- the way through -------------------------------------------------------------------

    async def _main(self) -> None:
        try:
            await self._serve()
        except Exception as e:
            log.failure("request {id} failed", id=self.request.id)
            self._finish(Status.INTERNAL_ERROR, f"internal error: {type(e).__name__}")
        finally:
            if self.box is not None:
                box, self.box = self.box, None
                self.rt.pool.release(box)

    async def _serve(self) -> None:
        req = self.request
        try:
            self._waiting = self.rt.pool.acquire(req.session_id)
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
        build = await self._build()
        if build.diagnostics:
            self._send("stderr", build.diagnostics.encode())
        if build.binary is None:
            self._finish_from(build.status, build.message, build.result)
            return
        if self.cancel_reason is not None:
            self._finish(Status.CANCELLED, self.cancel_reason)
            return
        self.phase = Phase.RUN
        await self._run(build.binary)

    async def _build(self) -> BuildOutcome:
        req, rt = self.request, self.rt
        files = dict(req.files)
        files.setdefault("go.mod", rt.toolchain.go_mod())
        key = BinaryCache.key(files, rt.toolchain.ident, BUILD_FLAGS)
        cached = rt.binaries.get(key)
        if cached is not None:
            self.cached = True
            rt.count("cache_hits")
            return BuildOutcome(cached, Status.OK, "")
        shared = rt.builds_in_flight.get(key)
        if shared is not None:
            rt.count("cache_shared")
            waiter: defer.Deferred = defer.Deferred()
            shared.addBoth(lambda r: (waiter.callback(r), r)[1])
            outcome = await waiter
            if isinstance(outcome, BuildOutcome) and outcome.binary is not None:
                return BuildOutcome(outcome.binary, Status.OK, "")
            if isinstance(outcome, BuildOutcome) and outcome.status is Status.COMPILE_ERROR:
                return outcome
        rt.count("cache_misses")
        done: defer.Deferred = defer.Deferred()
        rt.builds_in_flight[key] = done
        outcome = None
        try:
            outcome = await self._compile(files, key)
            return outcome
        finally:
            del rt.builds_in_flight[key]
            done.callback(outcome)

    async def _compile(self, files: dict[str, bytes], key: str) -> BuildOutcome:
        rt, box = self.rt, self.box
        assert box is not None
        limits = self.request.limits.build
        job_dir = rt.jobs_dir / str(self.number)
        hostfs.make_private_dir(job_dir, 0, 0, 0o711)
        try:
            src, out = job_dir / "src", job_dir / "out"
            hostfs.make_private_dir(src, 0, 0, 0o755)
            hostfs.write_tree(src, files)
            hostfs.make_private_dir(out, box.uid, box.gid, 0o700)
            run = SandboxRun(
                phase=Phase.BUILD,
                box=box,
                argv=rt.toolchain.build_argv(),
                env=rt.toolchain.build_env(),
                cwd=SOURCE_INSIDE,
                limits=limits,
                mounts=[
                    Mount(rt.toolchain.goroot, GOROOT_INSIDE),
                    Mount(rt.toolchain.std_cache, GOCACHE_INSIDE),
                    Mount(src, SOURCE_INSIDE),
                    Mount(out, OUTPUT_INSIDE, writable=True),
                ],
                with_workspace=False,
                scratch=job_dir,
            )
            collected: list[bytes] = []
            size = [0]
            cap = self.request.limits.output_bytes

            def collect(stream: str, data: bytes, timestamp: str) -> int:
                room = max(0, cap - size[0])
                collected.append(data[:room])
                size[0] += len(data)
                return len(data)

            result = await self._child(run, collect)
            rt.metrics.build_seconds.observe(result.wall_ms / 1000)
            text = b"".join(collected).decode("utf-8", "replace")
            if result.report.failed:
                return BuildOutcome(None, Status.INTERNAL_ERROR,
                                    f"sandbox failure: {result.report.message}", result=result)
            limit = self._limit_status(result, Phase.BUILD)
            if limit is not None:
                return BuildOutcome(None, limit[0], limit[1], diagnostics=diagnostics.clean(text),
                                    result=result)
            if result.report.exit_code != 0:
                cleaned = diagnostics.clean(text)
                return BuildOutcome(None, Status.COMPILE_ERROR, "the program did not compile",
                                    diagnostics=cleaned, result=result)
            self.build_ms = result.wall_ms
            try:
                data = hostfs.read_box_file(out, "main", MAX_BINARY_BYTES)
            except OSError as e:
                return BuildOutcome(None, Status.INTERNAL_ERROR,
                                    f"the build left no usable program ({e.strerror})",
                                    result=result)
            return BuildOutcome(rt.binaries.put(key, data), Status.OK, "", result=result)
        finally:
            hostfs.remove_tree(job_dir)

    async def _run(self, binary: Path) -> None:
        rt, box = self.rt, self.box
        assert box is not None
        limits = self.request.limits.run
        rt.driver.resize_box(box, limits.disk_mb)
        run = SandboxRun(
            phase=Phase.RUN,
            box=box,
            argv=[BINARY_INSIDE],
            env=dict(RUN_ENV),
            cwd="/box",
            limits=limits,
            mounts=[Mount(binary, BINARY_INSIDE)],
            with_workspace=True,
        )
        result = await self._child(run, self._stream)
        self.run_ms = result.wall_ms
        rt.metrics.run_seconds.observe(result.wall_ms / 1000)
        self._flush()
        if result.report.failed:
            self._finish(Status.INTERNAL_ERROR, f"sandbox failure: {result.report.message}",
                         result)
            return
        limit = self._limit_status(result, Phase.RUN)
        if limit is not None:
            self._finish(limit[0], limit[1], result)
            return
        report = result.report
        if report.signal is not None:
            name = SIGNAL_NAMES.get(report.signal, f"signal {report.signal}")
            self._finish(Status.RUNTIME_ERROR, f"the program was killed by {name}", result,
                         signal=name)
        elif report.exit_code:
            self._finish(Status.RUNTIME_ERROR,
                         f"the program exited with status {report.exit_code}", result)
        else:
            self._finish(Status.OK, "the program exited normally", result)

    async def _child(self, run: SandboxRun, sink) -> ChildResult:
        cgroup = None
        if self.rt.cgroups.version is not None:
            cgroup = self.rt.cgroups.create(f"{run.phase}-{os.getpid()}-{self.number}")
            assert cgroup is not None
            cgroup.set_limits(run.limits.memory_mb * MIB, run.limits.processes)
        run.cgroup = cgroup
        self.child = SandboxChild(self.rt.reactor, self.rt.driver, run, sink)
        if self.paused:
            self.child.pauseProducing()
        if self.cancel_reason is not None:
            self.child.stopped_for = "cancelled"
        try:
            return await self.child.start()
        finally:
            self.child = None

    def _limit_status(self, result: ChildResult, phase: Phase) -> tuple[Status, str] | None:
        """The status when a limit (or a cancel) ended the phase, else None."""
        lim = self.request.limits.phase(phase)
        what = "the build" if phase is Phase.BUILD else "the program"
        stopped = result.stopped_for
        if stopped == "cancelled":
            return Status.CANCELLED, self.cancel_reason or "cancelled"
        if stopped == "output":
            return (Status.OUTPUT_LIMIT,
                    f"{what} wrote more than {self.request.limits.output_bytes} bytes of output")
        if result.oom_killed:
            return Status.MEMORY_LIMIT, f"{what} used more than {lim.memory_mb} MiB of memory"
        if stopped == "wall":
            return (Status.TIMEOUT,
                    f"{what} ran longer than {lim.wall_ms} ms of wall time (timeout: wall)")
        if stopped == "cpu" or (result.report.timed_out == "cpu"):
            return (Status.TIMEOUT,
                    f"{what} used more than {lim.cpu_ms} ms of CPU time (timeout: cpu)")
        if result.report.timed_out == "wall":
            return (Status.TIMEOUT,
                    f"{what} ran longer than {lim.wall_ms} ms of wall time (timeout: wall)")
        sig = result.report.signal
        if sig == 24 or (sig == 9 and self.rt.cgroups.version is None
                         and result.wall_ms >= lim.cpu_ms):
            return (Status.TIMEOUT,
                    f"{what} used more than {lim.cpu_ms} ms of CPU time (timeout: cpu)")
        if (self.rt.cgroups.version is None and result.report.exit_code == 2
                and b"out of memory" in result.stderr_tail):
            return Status.MEMORY_LIMIT, f"{what} used more than {lim.memory_mb} MiB of memory"
        return None

    # -- output ----------------------------------------------------------------------------

    def _stream(self, stream: str, data: bytes, timestamp: str) -> int:
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
        if self.request.session_id is not None:
            fields["session_id"] = self.request.session_id
        fields.update(extra)
        self.rt.count(f"status_{status}")
        self.rt.metrics.request_ended(str(status), self.sent_bytes)
        log.info(
            "request {id} session={session} box={box} status={status} phase={phase} "
            "queue_ms={queue_ms} build_ms={build_ms} cached={cached} run_ms={run_ms} "
            "bytes={bytes}",
            id=self.request.id, session=self.request.session_id,
            box=self.box.number if self.box else None, status=str(status),
            phase=str(self.phase), queue_ms=self.queue_ms, build_ms=self.build_ms,
            cached=self.cached, run_ms=self.run_ms, bytes=self.sent_bytes,
        )
        self.emit(final_event(self.request.id, status, message, self.phase, **fields))
