"""One sandboxed process tree, from spawn to its end report.

Like buildbot-worker's RunProcess, one object owns the child's whole life: it starts it, feeds
its stdin, turns every ``childDataReceived`` chunk into output at once, enforces the wall-time,
CPU-time and output limits, kills the whole box (the sandbox's pid namespace, and its cgroup)
when one is hit or the request is cancelled, and reports how it ended.
"""

from __future__ import annotations

import os
import signal as signals
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sandboxd.clock import now_ms
from sandboxd.sandbox import boxprocs
from sandboxd.sandbox.driver import HOLD_FD, STATUS_FD, Driver, Report, SandboxRun
from sandboxd.sandbox.watch import LimitWatch

log = Logger()

GRACE_S = 0.5
BOX_EMPTY_POLL_S = 0.005
BOX_EMPTY_S = 10.0  # SIGKILLed processes end; one stuck in the kernel is logged, not waited on
STDERR_TAIL = 4096
STREAMS = {1: "stdout", 2: "stderr"}
DRAIN_READS = 64  # of 64 KiB each a pipe, at most, per drain (a pipe holds 1 MiB at most)
# What the Go runtime prints when an allocation fails (under RLIMIT_AS, with no cgroup); its
# goroutine dump follows, so this is looked for as the output passes, not in the tail.
OUT_OF_MEMORY = (b"fatal error: out of memory", b"runtime: out of memory",
                 b"failed to reserve page summary memory")
# What the Go runtime, os/exec and sh print when a fork or a thread is refused; on hosts
# without a pids cgroup this is how the process limit shows.
NO_MORE_PROCESSES = (b"failed to create new OS thread", b"resource temporarily unavailable",
                     b"Cannot fork")

# Called with (stream, bytes, timestamp); returns how many of the bytes may be sent.  Fewer
# than given means the output limit was reached.
OutputSink = Callable[[str, bytes, str], int]


class Streams:
    """What a child's descriptors carry besides its output: the sandbox's status, the sandbox
    tool's own words (see ``Driver.stderr_fd``), the tail of the program's stderr, and what
    the Go runtime said there of memory and processes (how those limits show on hosts
    without a cgroup)."""

    def __init__(self, stderr_fd: int) -> None:
        self.stderr_fd = stderr_fd
        self.status = b""
        self.tool_stderr = b""
        self.stderr_tail = b""
        self.out_of_memory = False
        self.processes_refused = False

    def take(self, fd: int, data: bytes) -> str | None:
        """Keep what is kept of ``data``; the stream it is the program's output on, if any."""
        if fd == STATUS_FD:
            self.status += data[: max(0, 65536 - len(self.status))]
            return None
        if fd == 2 and self.stderr_fd != 2:
            self.tool_stderr += data[: max(0, STDERR_TAIL - len(self.tool_stderr))]
            return None
        if fd == self.stderr_fd:
            fd = 2
        if fd == 2:
            window = self.stderr_tail[-64:] + data
            self.stderr_tail = (self.stderr_tail + data)[-STDERR_TAIL:]
            if not self.out_of_memory and any(m in window for m in OUT_OF_MEMORY):
                self.out_of_memory = True
            if not self.processes_refused and any(m in window for m in NO_MORE_PROCESSES):
                self.processes_refused = True
        return STREAMS.get(fd)


@dataclass
class ChildResult:
    """How a process tree ended, as measured by the daemon and the driver."""

    report: Report
    stopped_for: str | None  # "wall", "cpu", "memory", "output", "cancelled", or None
    wall_ms: int
    cpu_ms: int | None
    memory_kb: int | None
    oom_killed: bool
    pids_refused: bool
    stderr_tail: bytes
    out_of_memory: bool = False


class SandboxChild(protocol.ProcessProtocol):
    """Drives one ``SandboxRun``; ``start()`` fires with a ``ChildResult``."""

    def __init__(
        self,
        reactor: IReactorProcess,
        driver: Driver,
        run: SandboxRun,
        sink: OutputSink,
        stdin: bytes | None = b"",
    ) -> None:
        self.reactor = reactor
        self.driver = driver
        self.run = run
        self.sink = sink
        self.stdin = stdin  # None: keep stdin open for ``write_stdin``
        self.stopped_for: str | None = None
        self.streams = Streams(driver.stderr_fd)
        self.paused = False
        self._done: defer.Deferred[ChildResult] = defer.Deferred()
        self._started = 0.0
        self.watch = LimitWatch(reactor, run, self.stop,  # type: ignore[arg-type]
                                lambda: self.stopped_for is not None)
        self._ended = False
        self._hold_write: int | None = None  # a held run's "go" pipe (see release())

    # -- life ------------------------------------------------------------------------------

    def start(self) -> defer.Deferred[ChildResult]:
        """Spawn the sandbox; a held run (``run.hold``) waits for ``release()`` to start its
        program, and its limits' clocks start then."""
        self._started = time.monotonic()
        try:
            if self.run.hold or self.run.hold_launcher:
                read_end, self._hold_write = os.pipe()
                self.run.fds[HOLD_FD] = read_end
            self.driver.prepare(self.run)
            argv, env = self.driver.command(self.run)
            fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r", STATUS_FD: "r"}
            fds[self.driver.stderr_fd] = "r"
            self.reactor.spawnProcess(
                self, argv[0], argv, env=env, childFDs={**fds, **self.run.fds},
            )
        except Exception:
            failure = Failure()
            self.run.close_fds()
            if self._hold_write is not None:
                os.close(self._hold_write)
                self._hold_write = None
            self._finish_cgroup()
            self._finish_driver()
            return defer.fail(failure)
        self.run.close_fds()
        if not (self.run.hold or self.run.hold_launcher):
            self.watch.arm()
        return self._done

    def release(self) -> None:
        """Let a held run's program start now."""
        fd, self._hold_write = self._hold_write, None
        if fd is None:
            return
        self._started = time.monotonic()
        try:
            os.write(fd, b"go\n")
        except OSError:
            pass  # the sandbox is gone already; processEnded reports it
        finally:
            os.close(fd)
        if not self._ended:
            self.watch.arm()

    def abandon(self) -> None:
        """End a held child that was never released.  Only its own processes are killed: a
        child held at its launcher has nothing running as the box's uid, whose processes
        may belong to the request now using the box."""
        if self._ended or self._hold_write is None:
            self.stop("cancelled")
            return
        self.stopped_for = "cancelled"
        if self.run.cgroup is not None:
            self.run.cgroup.kill_all()
        pid = getattr(self.transport, "pid", None)
        if pid is not None:
            self._signal(pid, signals.SIGKILL)

    def connectionMade(self) -> None:
        if self.stdin is not None:
            if self.stdin:
                self.transport.write(self.stdin)
            self.transport.closeStdin()
        if self.paused:
            self.transport.pauseProducing()

    def write_stdin(self, data: bytes) -> None:
        if not self._ended and self.transport is not None:
            self.transport.write(data)

    def close_stdin(self) -> None:
        if not self._ended and self.transport is not None:
            self.transport.closeStdin()

    def stop(self, reason: str) -> None:
        """End the whole box now; ``reason`` is what the final status will say."""
        if self._ended:
            return
        if self.stopped_for is None:
            self.stopped_for = reason
        if self.run.cgroup is not None:
            self.run.cgroup.kill_all()
        if self.transport is not None and self.paused:
            # A paused child's pipes are not read, so they would never reach end-of-file
            # and the run would never end (its box held for as long as the client does not
            # read).  What is left in them is bounded by the pipe buffers: drain it.
            self.transport.resumeProducing()
        pid = getattr(self.transport, "pid", None)
        if pid is None:
            return
        if not self.driver.graceful_stop:
            self._signal(pid, signals.SIGKILL)
            self._kill_box_uid()
            return
        # isolate: SIGTERM makes it kill the box and write its meta file; then the group.
        self._signal(pid, signals.SIGTERM)
        clock: IReactorTime = self.reactor  # type: ignore[assignment]
        clock.callLater(GRACE_S, self._signal, -pid, signals.SIGKILL)
        clock.callLater(GRACE_S, self._kill_box_uid)

    def _kill_box_uid(self, ended: bool = False) -> None:
        """SIGKILL every process running as the box's uid: the sure way to end a box whose
        sandbox died half-made (its child then holds our pipes open).  Never once the run
        has ended (the box may serve the next request by then), but from ``processEnded``."""
        if self._ended and not ended:
            return
        boxprocs.kill_all(self.run.box.uid)

    def _signal(self, pid: int, sig: int) -> None:
        if self._ended:
            return
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # -- flow control ----------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        if self.transport is not None and not self._ended and self.stopped_for is None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.transport is not None and not self._ended:
            self.transport.resumeProducing()

    def drain_output(self, empty: Callable[[str, bool], None]) -> None:
        """Read now what the program's stdout and stderr pipes hold (non-blocking; delivered
        as ``childDataReceived``), and call ``empty(stream, ended)`` the moment a pipe is found
        empty or at its end: a faketime run's records are put back in order by what was read
        before that moment (``sandboxd.jobs.fakeclock``).  Bounded by the output limit like any
        read; the reactor still sees the end of each pipe itself."""
        pipes = getattr(self.transport, "pipes", None)
        if pipes is None or self._ended:
            return
        for fd in (1, self.driver.stderr_fd):
            stream = STREAMS[1 if fd == 1 else 2]
            for _ in range(DRAIN_READS):
                reader = pipes.get(fd)
                if reader is None:
                    empty(stream, True)
                    break
                if self.stopped_for == "output":
                    return
                try:
                    data = os.read(reader.fileno(), 65536)
                except BlockingIOError:
                    empty(stream, False)
                    break
                except (OSError, ValueError):  # closed under us: the reactor ends it
                    break
                if not data:
                    empty(stream, True)
                    break
                self.childDataReceived(fd, data)

    # -- ProcessProtocol -------------------------------------------------------------------

    def childDataReceived(self, fd: int, data: bytes) -> None:
        stream = self.streams.take(fd, data)
        if stream is None or self.stopped_for == "output":
            return  # not output; or past the output limit: nothing more is sent
        # Also after a wall, CPU or memory limit: what is still in the pipes was written
        # before the limit struck, and is delivered (up to the output limit).
        sent = self.sink(stream, data, now_ms())
        if sent < len(data) and self.stopped_for is None:
            self.stop("output")

    def processEnded(self, reason: Failure) -> None:
        if self._hold_write is not None:
            os.close(self._hold_write)
            self._hold_write = None
        self._ended = True
        self.watch.disarm()
        wall_ms = int((time.monotonic() - self._started) * 1000)
        exit_code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        cpu_ms = self.watch.cpu_seen // 1_000_000 if self.run.cgroup is None else None
        memory_kb = self.watch.memory_seen // 1024 if self.watch.memory_seen else None
        oom = refused = False
        if self.run.cgroup is not None:
            cpu_ms, memory_kb, oom, refused = _cgroup_measures(self.run.cgroup)
        self._finish_cgroup()
        if self.run.cgroup is None:
            self._kill_box_uid(ended=True)  # nothing of the request outlives its final event
        # The sandbox's tool ending and the pipes closing do not mean its processes are gone:
        # bwrap's outer process exits as soon as the program does, and a killed process exists
        # until its exit is complete (its memory freed; the sandbox's init until its pid
        # namespace is empty).  The result (the final event, the box's reuse) waits for that.
        self._when_box_empty(time.monotonic() + BOX_EMPTY_S,
                             lambda: self._report(exit_code, sig, wall_ms, cpu_ms, memory_kb,
                                                  oom, refused))

    def _when_box_empty(self, deadline: float, then: Callable[[], None]) -> None:
        """Call ``then`` once no process of the box uid is alive (zombies hold nothing).  Only
        without a cgroup: with one, a held run waits as the same uid beside the build, and the
        cgroup's removal waits for the run's own processes."""
        left = (boxprocs.alive(boxprocs.pids_of(self.run.box.uid))
                if self.run.cgroup is None else [])
        if left and time.monotonic() < deadline:
            self._kill_box_uid(ended=True)
            clock: IReactorTime = self.reactor  # type: ignore[assignment]
            clock.callLater(BOX_EMPTY_POLL_S, self._when_box_empty, deadline, then)
            return
        if left:
            log.error("box {box}: processes {pids} still alive {s} s after the run ended",
                      box=self.run.box.number, pids=left, s=BOX_EMPTY_S)
        then()

    def _report(self, exit_code: int | None, sig: int | None, wall_ms: int, cpu_ms: int | None,
                memory_kb: int | None, oom: bool, refused: bool) -> None:
        self._finish_driver()
        try:
            report = self.driver.report(self.run, exit_code, sig, self.streams.status)
        except Exception as e:
            log.failure("driver report")
            report = Report(exit_code=exit_code, signal=sig, failed=True,
                            message="the sandbox's report could not be read", detail=repr(e))
        if report.failed:
            # The server's fault, not the program's: the client gets report.message (fixed
            # wording); the operator gets everything the sandbox tool said, host paths and all.
            said = (self.streams.tool_stderr or self.streams.stderr_tail).decode(
                "utf-8", "replace").strip()
            report.detail = "; ".join(filter(None, (report.detail, said)))
            log.error("sandbox failure in box {box} ({phase}): {message}: {detail}",
                      box=self.run.box.number, phase=str(self.run.phase),
                      message=report.message, detail=report.detail or "(it said nothing)")
        result = ChildResult(
            report=report,
            stopped_for=self.stopped_for,
            wall_ms=report.wall_ms if report.wall_ms is not None else wall_ms,
            cpu_ms=report.cpu_ms if report.cpu_ms is not None else cpu_ms,
            memory_kb=report.memory_kb if report.memory_kb is not None else memory_kb,
            oom_killed=oom or report.memory_exceeded,
            pids_refused=refused or self.streams.processes_refused,
            stderr_tail=self.streams.stderr_tail,
            out_of_memory=self.streams.out_of_memory,
        )
        self._done.callback(result)

    def _finish_driver(self) -> None:
        try:
            self.driver.finish(self.run)
        except Exception:
            log.failure("cleaning up after a run")

    def _finish_cgroup(self) -> None:
        if self.run.cgroup is not None:
            try:
                self.run.cgroup.remove()
            except Exception:
                log.failure("removing cgroup")


SIGNAL_NAMES = {int(s): s.name for s in signals.Signals}


def _cgroup_measures(cg: Any) -> tuple[int | None, int | None, bool, bool]:
    """CPU time (ms), peak memory (KiB), whether the OOM killer struck and whether a fork
    was refused, as the run's cgroup counted them (unknown ones None or False)."""
    try:
        ns = cg.cpu_ns()
        peak = cg.memory_peak_bytes()
        return (None if ns is None else ns // 1_000_000, None if peak is None else peak // 1024,
                cg.oom_killed(), cg.pids_refused())
    except Exception:
        log.failure("reading cgroup statistics")
        return None, None, False, False
