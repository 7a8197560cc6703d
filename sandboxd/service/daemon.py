"""The daemon: owns the parts `sandboxd.service.assemble` made; starts them, drains and stops."""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet import reactor as default_reactor
from twisted.logger import Logger

from sandboxd.boxes import hostfs
from sandboxd.golang import toolchain
from sandboxd.jobs.submit import Requests, all_fired
from sandboxd.service import instance
from sandboxd.service.assemble import Parts
from sandboxd.service.health import HealthCheck
from sandboxd.service.metrics import watch
from sandboxd.service.settings import Settings
from sandboxd.wire.connection import SHUTDOWN_NOT_STARTED, ConnectionFactory
from sandboxd.wire.request import SourceLimits

log = Logger()

SHUTDOWN_KILL_WAIT_S = 10.0  # cancelled requests: their boxes are killed, this is a hang bound
SHUTDOWN_FLUSH_S = 5.0  # connections get this long to take their last events
BASE_MARGIN_MB = 256  # launchers held ahead, the health probe: over the boxes' own bounds


class SandboxDaemon(service.MultiService):
    """Everything one ``twistd sandboxd`` runs; listeners are its children."""

    def __init__(self, settings: Settings, parts: Parts, reactor: Any = None) -> None:
        """Wires what ``assemble(settings)`` made; nothing slow, nothing on disk."""
        super().__init__()
        s = settings
        self.settings = settings
        self.reactor = reactor or default_reactor
        self.policy = s.policy
        self.shutdown_grace = s.shutdown_grace
        self.drain_time = s.drain_time
        self.node_name = parts.runtime.node
        self.stopping = False
        self.listeners: list[service.Service] = []
        self.state_dir = s.state_dir
        self.state_lock = parts.state_lock
        self.range_lock = parts.range_lock
        self.driver = parts.driver
        self.check_box = parts.check_box
        self.toolchains = parts.toolchains
        self.toolchain = parts.runtime.toolchain
        self.toolchains_dir = parts.toolchains_dir
        self.cgroups = parts.cgroups
        self.swept = parts.swept
        self.pool = parts.pool
        self.runtime = parts.runtime
        self.health = HealthCheck(self.runtime, s.policy.defaults.run, lambda: self.stopping)
        self.checked = ""  # what the start-up check found (see ``check``)
        self.factory = ConnectionFactory(
            Requests(self.runtime),
            s.policy,
            SourceLimits(max_bytes=s.max_source_bytes, max_files=s.max_files,
                         max_stdin_bytes=s.max_stdin_bytes),
            max_line_bytes=s.max_line_bytes,
            idle_timeout=s.idle_timeout,
            max_pending_input=s.max_pending_input,
            max_connections=s.max_connections,
            client_identity=s.client_identity,
            reactor=self.reactor,
        )
        watch(self.runtime.metrics, self.runtime, lambda: len(self.factory.connections))

    def check(self) -> None:
        """Prove this daemon can serve (see ``sandboxd.service.selfcheck``), before any listener
        opens; StartError with the cause and the fix otherwise (what it made is removed)."""
        from sandboxd.service import selfcheck

        try:
            self.checked = selfcheck.check(self, self.check_box)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """A start that fails after the cgroups were made: remove what was made (the locks go
        with the process)."""
        self.cgroups.remove_bases()
        toolchain.unmount_images(self.toolchains_dir)

    def _limit_box_memory(self) -> None:
        """Account what boxes hold where a limit applies: the base cgroup of every build and
        run gets a memory limit of what session boxes may hold (--max-box-memory-mb), plus
        what the ``--boxes`` requests running at once may use at their maximum limits, plus
        a margin for the launchers held ahead.  The pool's reservation refuses a session
        clearly before this is reached; this bounds anything that gets past it."""
        settings, maxima = self.pool.settings, self.policy.maximums
        running = settings.boxes * (maxima.build.memory_mb + maxima.run.memory_mb)
        total_mb = (settings.max_box_memory_mb or 0) + running + BASE_MARGIN_MB
        problem = (self.cgroups.limit_memory(total_mb * 1024 * 1024)
                   if self.cgroups.version is not None else self.cgroups.describe())
        if problem is None:
            log.info("memory of all boxes together: at most {mb} MiB (cgroup v{v}); session "
                     "boxes' files: at most {box} MiB", mb=total_mb, v=self.cgroups.version,
                     box=settings.max_box_memory_mb)
        else:
            log.warn("memory of all boxes together is not bounded by a cgroup ({why}); "
                     "session boxes' files: at most {box} MiB", why=problem,
                     box=settings.max_box_memory_mb)

    def startService(self) -> None:
        # SIGHUP (the terminal of a foreground daemon closed) stops it the way SIGTERM and
        # SIGINT do: gracefully, every box removed.  Logs are not reopened on SIGHUP.
        signal.signal(signal.SIGHUP, self._hangup)
        instance.mark_holder(self.state_lock)  # twistd may have forked to daemonize
        if self.range_lock is not None:
            instance.update_range_pid(self.range_lock)
        self._limit_box_memory()
        self.pool.start()
        go = ", ".join(f"{n}={tc.version}" for n, tc in self.toolchains.items())
        log.info("sandboxd {node}: {driver} driver, {n} boxes, Go {go}, {cg}",
                 node=self.node_name, driver=self.driver.name, n=self.pool.settings.boxes,
                 go=go, cg=self.cgroups.describe())
        for line in self.driver.describe():
            log.info("limit mechanism: {line}", line=line)
        if self.runtime.modules is not None:
            log.info("{modules}", modules=self.runtime.modules.describe())
        log.info("{goimports}", goimports=(
            f"goimports: {self.runtime.goimports} (fmt requests with imports)"
            if self.runtime.goimports else "no goimports (apt-get install "
            "golang-golang-x-tools): fmt requests with imports are refused"))
        if self.swept:
            log.info("removed {n} cgroups a previous daemon left", n=self.swept)
        if self.checked:
            log.info("{checked}", checked=self.checked)
        super().startService()
        for listener in self.listeners:
            if listener.port is not None:  # listening since the start (sandboxd.service.listening)
                self._listening(listener.port, listener)
            elif listener.waiting is not None:  # an onion service: once tor published it
                listener.waiting.addCallbacks(self._listening, self._not_listening,
                                              callbackArgs=(listener,),
                                              errbackArgs=(listener,))

    def _hangup(self, signum: int, frame: Any) -> None:
        log.info("Received SIGHUP, shutting down.")
        self.reactor.callFromThread(self.reactor.stop)

    def _not_listening(self, failure: Any, listener: Any) -> None:
        # A listener the operator asked for and cannot have (an onion service tor could not
        # publish, say) is a failed start: stop, exit 1, and let the service manager retry
        # (Restart=on-failure), rather than run without it.
        if self.stopping or failure.check(defer.CancelledError):
            return
        from sandboxd.service.listening import describe_failure

        log.critical("sandboxd: {why}; stopping",
                     why=describe_failure(listener.description, failure.value))
        self.reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
        self.reactor.callWhenRunning(self.reactor.stop)  # it may fail before the reactor runs

    def _listening(self, port: Any, listener: Any) -> Any:
        host = port.getHost()
        where = getattr(host, "onion_uri", None)
        where = f"{where}:{host.onion_port}" if where else str(host)
        log.info("listening on {where}", where=where)
        return port

    def stopService(self) -> defer.Deferred[None]:
        """SIGTERM: /healthz says 503 at once; after --drain-time (a balancer has stopped
        sending work here meanwhile; everything else went on), stop accepting, let running
        requests finish within the grace period, cancel the rest (each still gets its final
        event), close connections, remove boxes."""
        self.stopping = True
        service.Service.stopService(self)
        return defer.ensureDeferred(self._drain())

    async def _drain(self) -> None:
        if self.drain_time > 0:
            log.info("draining: /healthz answers 503 for {s} s while requests are still taken",
                     s=self.drain_time)
            await task.deferLater(self.reactor, self.drain_time, lambda: None)
        self.factory.shutting_down = True
        # Request listeners close first; the rest (metrics: /healthz says 503 meanwhile) last.
        await self._stop_children([s for s in self.listeners if s.running])
        waiting = [job for job in self._jobs() if job.box is None]
        for job in waiting:
            job.cancel(SHUTDOWN_NOT_STARTED)
        running = len(self._jobs())
        if running:
            log.info("shutting down: {n} requests running; waiting up to {s} s",
                     n=running, s=self.shutdown_grace)
        if not await self.factory.requests.ended(self.shutdown_grace, self.reactor):
            left = self._jobs()
            log.info("shutting down: grace period over; cancelling {n} requests", n=len(left))
            for job in left:
                job.cancel(f"the server is shutting down (the {self.shutdown_grace:g} s grace "
                           "period for running requests is over)")
            if not await self.factory.requests.ended(SHUTDOWN_KILL_WAIT_S, self.reactor):
                log.warn("shutting down: {n} requests did not end", n=len(self._jobs()))
        connections = list(self.factory.connections)
        for conn in connections:
            conn.transport.loseConnection()  # after every final event is written
        if not await all_fired([c.gone for c in connections], SHUTDOWN_FLUSH_S, self.reactor):
            for conn in list(self.factory.connections):
                conn.transport.abortConnection()
        # A health probe in flight uses a spare box of its own: let it finish and remove it.
        probe = self.health.probe
        await all_fired([probe] if probe is not None else [], SHUTDOWN_FLUSH_S, self.reactor)
        self.pool.stop()
        held = self.runtime.held_builds
        if held is not None:  # their launchers are killed: let their cgroups and dirs go
            await all_fired(list(held.ending.values()), SHUTDOWN_FLUSH_S, self.reactor)
        await self._stop_children([s for s in reversed(list(self)) if s.running])
        # The requests' directories whose removal waited for their final events.
        await all_fired(list(self.runtime.put_off), SHUTDOWN_FLUSH_S, self.reactor)
        self._sweep_leftovers()
        toolchain.unmount_images(self.toolchains_dir)
        self.cgroups.remove_bases()
        if self.range_lock is not None:
            instance.unregister_range(self.state_dir, self.range_lock)
            self.range_lock = None
        log.info("sandboxd stopped; every box removed")

    def _sweep_leftovers(self) -> None:
        """The last step of a shutdown: whatever is still there though every box was
        destroyed (a request that did not end, a bug) is removed like a dead daemon's at start:
        box directories and their mounts, build directories, this daemon's cgroups."""
        steps = (
            ("box directories", self.driver.boxes_dir, self.driver.sweep),
            ("build directories", self.runtime.jobs_dir, self._remove_job_dirs),
        )
        for what, directory, sweep in steps:
            try:
                left = sorted(entry.name for entry in directory.iterdir())
                if left:
                    log.warn("shutting down: {n} {what} left behind ({names}); removing them",
                             n=len(left), what=what, names=", ".join(left[:10]))
                    sweep()
            except Exception:
                log.failure("shutting down: removing the {what} left behind", what=what)
        try:
            swept = self.cgroups.sweep()
            if swept:
                log.warn("shutting down: {n} cgroups left behind; removed them", n=swept)
        except Exception:
            log.failure("shutting down: removing the cgroups left behind")

    def _remove_job_dirs(self) -> None:
        for entry in self.runtime.jobs_dir.iterdir():
            hostfs.remove_scratch_dir(entry)

    async def _stop_children(self, children: list[service.Service]) -> None:
        results = await defer.DeferredList(
            [defer.maybeDeferred(child.stopService) for child in children], consumeErrors=True)
        for ok, failure in results:
            if not ok:
                log.failure("stopping a listener", failure)

    def _jobs(self) -> list[Any]:
        return list(self.factory.requests.live)  # every face's: lines, HTTP, WebSocket


def _exit_failed() -> None:
    """After a clean shutdown (boxes removed), end with status 1: twistd has no exit code."""
    import sys

    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(1)
