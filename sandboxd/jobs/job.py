"""One request's way through the daemon: wait for a box, build, run, end with one final event."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from sandboxd.boxes.box import Box
from sandboxd.boxes.pool import NO_CLIENT, QueueFull
from sandboxd.clock import ms_after
from sandboxd.golang import gotest
from sandboxd.jobs import verdict
from sandboxd.jobs.build import BuildPhase
from sandboxd.jobs.children import Children
from sandboxd.jobs.fakeclock import FakeClock
from sandboxd.jobs.judge import JudgePhase
from sandboxd.jobs.output import Output, Stdin
from sandboxd.jobs.run import HeldRun, RunPhase
from sandboxd.jobs.runtime import Runtime
from sandboxd.jobs.testrun import BenchResults, TestEvents
from sandboxd.jobs.tools import ToolPhases
from sandboxd.sandbox import executable
from sandboxd.sandbox.child import ChildResult, SandboxChild
from sandboxd.status import Phase, Status
from sandboxd.wire.events import final_event
from sandboxd.wire.request import Request

log = Logger()

Emit = Callable[[dict[str, Any]], None]

NO_GOIMPORTS = ("this server cannot fix imports: goimports is not installed (its operator can "
                "install Debian's golang-golang-x-tools)")
class Boxes(Protocol):
    """Where a job gets its box and gives it back (``BoxPool`` is one)."""

    def acquire(self, session_id: str | None, client: str = NO_CLIENT,
                disk_mb: int | None = None) -> defer.Deferred[Box]: ...
    def release(self, box: Box) -> None: ...


_job_numbers = itertools.count(1)


class Job(BuildPhase, RunPhase, JudgePhase, ToolPhases, Children):
    """Runs one ``Request``; every path out of it sends exactly one final event."""

    def __init__(self, runtime: Runtime, request: Request, emit: Emit,
                 client: str = NO_CLIENT, boxes: Boxes | None = None) -> None:
        self.rt = runtime
        # Where its box comes from and goes back to: the pool, or a request that runs
        # several programs one after another (``sandboxd.jobs.versions``).
        self.boxes: Boxes = boxes if boxes is not None else runtime.pool
        self.request = request
        self.emit = emit
        self.client = client  # whose share of the queue and sessions it takes (pool.py)
        self.number = next(_job_numbers)
        self.phase = Phase.QUEUE
        self.box: Box | None = None
        self.child: SandboxChild | None = None
        self.output = Output(request.id, request.limits.output_bytes, emit, lambda: self.phase)
        self.finished = False
        self.cancel_reason: str | None = None
        self.paused = False
        self._waiting: defer.Deferred | None = None
        self.build_ms: int | None = None
        self.cached = False
        self.created = time.monotonic()
        self.queue_ms: int | None = None  # waiting for a box
        self.run_ms: int | None = None
        self.extra_fields: dict[str, Any] = {}
        self.toolchain = runtime.toolchains.get(request.go or "", runtime.toolchain)
        # Judging (``cases``) runs a program, never tests.
        self.testing = request.type == "run" and request.cases is None and (
            request.options.bench is not None or gotest.wants_tests(request.files, request.test))
        self.tests: gotest.Counter | None = None
        self.test_view: TestEvents | BenchResults | None = None  # test_json, bench
        self.renamed: dict[str, str] = {}
        self.goexperiment = ""  # from //GOEXPERIMENT= header lines, read by the build or vet
        self.stdin = Stdin(request.id, request.interactive)
        # The run's sandbox, set up while the build runs and held until the program is there.
        self.held: HeldRun | None = None
        # A faketime run's output: playback records decoded, in the order they were written.
        self.fakeclock = (FakeClock(self._deliver, self._drain_output,
                                    request.limits.output_bytes) if request.faketime else None)

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
        refused = self.stdin.refuse(data, limit)
        if refused is not None:
            return refused
        if self.child is not None and self.phase is Phase.RUN:
            self.child.write_stdin(data)
        else:
            self.stdin.pending.append(data)
        return None

    def close_stdin(self) -> None:
        """No more input: the program reads end of file once it has read what came."""
        if self.stdin.eof:
            return
        self.stdin.eof = True
        if self.child is not None and self.phase is Phase.RUN:
            self.child.close_stdin()

    def pause(self) -> None:
        self.paused = True
        # A judged case's output goes to the daemon (bounded), not to the slow client.
        if self.child is not None and self.request.cases is None:
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
                    self.boxes.release(box)
                except Exception:
                    log.failure("giving back {box} after request {id}", box=box,
                                id=self.request.id)

    async def _serve(self) -> None:
        req = self.request
        if req.type == "fmt" and req.imports and self.rt.goimports is None:
            self._finish(Status.BAD_REQUEST, NO_GOIMPORTS)  # what this server cannot do
            return
        try:
            self._waiting = self.boxes.acquire(req.session_id, self.client,
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
            self._end(await self._fmt())
            return
        if req.type == "vet":
            self._end(await self._vet())
            return
        build = await self._build()
        if build.diagnostics:
            self._send("stderr", build.diagnostics.encode())
        if build.binary is None:
            self._finish(build.status, build.message, build.result)
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
        if req.cases is not None:
            self._end(await self._judge(build.binary))
            return
        self._end(await self._run(build.binary))

    def _stopped(self, result: ChildResult, phase: Phase) -> verdict.Verdict | None:
        """The verdict when the sandbox failed or a limit (or a cancel) stopped the phase."""
        return verdict.stopped(result, phase, self.request.limits.phase(phase),
                               self.request.limits.output_bytes,
                               self.rt.cgroups.version is not None, self.cancel_reason)

    # -- output ----------------------------------------------------------------------------

    def _stream(self, stream: str, data: bytes, timestamp: str) -> int:
        if self.fakeclock is not None:
            return self.fakeclock(stream, data, timestamp)
        return self._deliver(stream, data, None, timestamp)

    def _deliver(self, stream: str, data: bytes, extra: dict[str, Any] | None,
                 timestamp: str = "") -> int:
        """The program's output (a faketime run's decoded), counted and sent."""
        if self.test_view is not None and stream == "stdout":
            return self.test_view.stdout(data, timestamp)
        if self.tests is not None and stream == "stdout":
            self.tests.feed(data)
        return self.output.stream(stream, data, timestamp, extra)

    def _drain_output(self, empty: Callable[[str, bool], None]) -> None:
        drain = getattr(self.child, "drain_output", None)
        if drain is not None:
            drain(empty)

    def _send(self, stream: str, data: bytes) -> None:
        self.output.send(stream, data)

    def _flush(self) -> None:
        if self.fakeclock is not None:
            self.fakeclock.end()
            self.output.flush(self.fakeclock.fields)
            return
        self.output.flush()

    # -- the end ---------------------------------------------------------------------------

    def _end(self, ending: verdict.Ending) -> None:
        """End the request as a phase's verdict says."""
        end, result = ending
        self._finish(end.status, end.message, result, **end.fields)

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
        fields["output_bytes"] = self.output.sent_bytes
        if self.request.type in ("run", "vet", "fmt"):
            fields["go"] = self.toolchain.version
        fields.update(self.extra_fields)
        if self.request.session_id is not None:
            fields["session_id"] = self.request.session_id
            if self.box is not None:  # its box was made for it: no file of earlier requests
                fields["session_new"] = self.box.runs == 1
                try:  # when it ends if not used again (the pool's clock, told as Unix ms)
                    fields["session_expires_at"] = ms_after(
                        self.rt.pool.session_expires_in(self.box))
                except Exception:
                    log.failure("the expiry of session {s}", s=self.request.session_id)
        if self.rt.node is not None:
            fields["node"] = self.rt.node
        fields.update(extra)
        try:  # bookkeeping that fails must not cost the client its final event
            self.rt.count(f"status_{status}")
            self.rt.metrics.request_ended(str(status), self.output.sent_bytes)
            log.info(
                "request {id} session={session} box={box} status={status} phase={phase} "
                "queue_ms={queue_ms} build_ms={build_ms} cached={cached} run_ms={run_ms} "
                "bytes={bytes}",
                id=_loggable(self.request.id), session=self.request.session_id,
                box=self.box.number if self.box else None, status=str(status),
                phase=str(self.phase), queue_ms=self.queue_ms, build_ms=self.build_ms,
                cached=self.cached, run_ms=self.run_ms, bytes=self.output.sent_bytes,
            )
        except Exception:
            log.failure("accounting for request {id}", id=self.request.id)
        self.emit(final_event(self.request.id, status, message, self.phase, **fields))


def _loggable(request_id: str) -> str:
    """A client's request id for the one-line-per-request log: as it is when plain, quoted
    (repr) when it holds a space, '=', a quote or a backslash, so that an id cannot pass for
    more fields of the line ("x status=ok").  Ids are printable (request.py): no newline."""
    if any(c.isspace() or c in "='\"\\" for c in request_id):
        return repr(request_id)
    return request_id


