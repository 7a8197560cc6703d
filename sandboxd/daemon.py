"""The daemon: builds the runtime (driver, cgroups, toolchain, caches, pool) and owns it."""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet import reactor as default_reactor
from twisted.logger import Logger

from sandboxd import cgroup, hostfs, instance, toolchain
from sandboxd.bincache import BinaryCache
from sandboxd.connection import SHUTDOWN_NOT_STARTED, ConnectionFactory
from sandboxd.drivers import DriverError, choose
from sandboxd.health import HealthCheck
from sandboxd.heldbuild import HeldBuilds
from sandboxd.job import Runtime
from sandboxd.limits import LimitPolicy
from sandboxd.metrics import Metrics
from sandboxd.modules import ModuleSource
from sandboxd.pool import BoxPool, PoolSettings
from sandboxd.request import SourceLimits

log = Logger()

SHUTDOWN_POLL_S = 0.05
SHUTDOWN_KILL_WAIT_S = 10.0  # cancelled requests: their boxes are killed, this is a hang bound
SHUTDOWN_FLUSH_S = 5.0  # connections get this long to take their last events


class SandboxDaemon(service.MultiService):
    """Everything one ``twistd sandboxd`` runs; listeners are its children."""

    def __init__(
        self,
        policy: LimitPolicy,
        sandbox: str,
        boxes: int,
        state_dir: Path,
        cache_dir: Path,
        go: str | None = None,
        more_go: dict[str, str] | None = None,
        max_queue: int = 100,
        max_sessions: int = 256,
        first_uid: int = 60000,
        first_box: int = 0,
        session_idle: float = 1200,
        session_max_age: float = 1800,
        cleanup_period: float = 300,
        binary_cache_mb: int = 512,
        max_line_bytes: int = 2 * 1024 * 1024,
        max_pending_input: int = 128 * 1024 * 1024,
        max_connections: int = 4096,
        max_source_bytes: int = 512 * 1024,
        max_files: int = 20,
        max_stdin_bytes: int = 1024 * 1024,
        gomodcache: str | None = None,
        goproxy: str | None = None,
        idle_timeout: float | None = 600,
        shutdown_grace: float = 10,
        reactor: Any = None,
        cgroups: str = "auto",
        hold_builds: bool = True,
    ) -> None:
        super().__init__()
        self.reactor = reactor or default_reactor
        self.policy = policy
        self.shutdown_grace = shutdown_grace
        self.stopping = False
        self.listeners: list[service.Service] = []
        _raise_open_files()
        # Before anything of the state directory is touched (the sweep of a dead daemon's
        # leftovers above all): one daemon per state directory.
        self.state_lock = instance.lock_state_dir(state_dir)
        self.range_lock: int | None = None
        os.chmod(state_dir, 0o711)
        # Nothing that can fail for an operator's reason comes after the cgroups are made
        # (they would be left behind): the driver (its tools), the box range, the toolchains.
        self.driver = choose(sandbox, state_dir=state_dir, cgroups=cgroup.CgroupSupport(
            None, {}, "not looked for yet"), first_uid=first_uid)
        if cgroups == "isolate":
            if self.driver.name != "isolate":
                raise DriverError("--cgroups=isolate needs the isolate driver")
            self.driver.own_cgroups = True
        # Box numbers first_box .. first_box + boxes + max_sessions + 1 (the pool's, a spare for
        # the health probe, the start-up check's): no other running daemon may use their uids.
        last_box = self.check_box = first_box + boxes + max_sessions + 1
        self.range_lock = instance.register_range(state_dir, instance.Range(
            first_box, last_box, self.driver.uid_for(first_box), self.driver.uid_for(last_box)))
        self.toolchain = toolchain.load(toolchain.find_goroot(go), cache_dir)
        self.toolchains = {self.toolchain.name: self.toolchain}
        for name, path in (more_go or {}).items():
            self.toolchains[name] = toolchain.load(toolchain.find_goroot(path), cache_dir, name)
        for tc in self.toolchains.values():  # each has its own standard-library cache
            toolchain.warm(tc, self.driver, quiet=False)
        if cgroups == "off":
            self.cgroups = cgroup.CgroupSupport(None, {}, "turned off with --cgroups=off")
        elif cgroups == "isolate":
            self.cgroups = cgroup.CgroupSupport(None, {}, "isolate --cg makes the cgroups")
        else:
            self.cgroups = cgroup.detect(f"sandboxd-{_instance_name(state_dir)}")
        self.driver.cgroups = self.cgroups
        # The lock is ours: whatever a previous daemon of this state directory left (it was
        # killed) can go now, before this one makes anything.
        self.swept = self.cgroups.sweep()  # logged once logging has begun (startService)
        self.driver.sweep()
        jobs_dir = state_dir / "jobs"
        if jobs_dir.is_dir() and not jobs_dir.is_symlink():
            for entry in jobs_dir.iterdir():  # a dead daemon's build dirs (tmpfs mounts)
                hostfs.remove_scratch_dir(entry)
        hostfs.remove_tree(jobs_dir)
        jobs_dir.mkdir(mode=0o711)
        self.pool = BoxPool(
            self.driver,
            PoolSettings(
                boxes=boxes,
                max_queue=max_queue,
                max_sessions=max_sessions,
                session_idle_s=session_idle,
                session_max_age_s=session_max_age,
                cleanup_period_s=cleanup_period,
                disk_mb=policy.defaults.run.disk_mb,
                first_box=first_box,
            ),
            self.reactor,
        )
        self.runtime = Runtime(
            reactor=self.reactor,
            driver=self.driver,
            pool=self.pool,
            cgroups=self.cgroups,
            toolchain=self.toolchain,
            binaries=BinaryCache(state_dir / "binaries", binary_cache_mb * 1024 * 1024),
            jobs_dir=jobs_dir,
            metrics=Metrics(),
            toolchains=self.toolchains,
            modules=(ModuleSource(cache=Path(gomodcache).resolve()) if gomodcache
                     else ModuleSource(proxy=goproxy) if goproxy else None),
        )
        if hold_builds:
            held = self.runtime.held_builds = HeldBuilds(
                self.reactor, self.driver, self.cgroups, self.toolchain, policy.defaults.build,
                jobs_dir)
            self.pool.on_ready = held.hold
            self.pool.on_retire = held.retire
        self.runtime.metrics.watch(self)
        self.health = HealthCheck(self)
        self.checked = ""  # what the start-up check found (see ``check``)
        self.factory = ConnectionFactory(
            self.runtime,
            policy,
            SourceLimits(max_bytes=max_source_bytes, max_files=max_files,
                         max_stdin_bytes=max_stdin_bytes),
            max_line_bytes=max_line_bytes,
            idle_timeout=idle_timeout,
            max_pending_input=max_pending_input,
            max_connections=max_connections,
        )

    def check(self) -> None:
        """Prove this daemon can serve (see ``sandboxd.selfcheck``), before any listener
        opens; StartError with the cause and the fix otherwise (what it made is removed)."""
        from sandboxd import selfcheck

        try:
            self.checked = selfcheck.check(self, self.check_box)
        except BaseException:
            self.cgroups.remove_bases()
            raise

    def startService(self) -> None:
        # SIGHUP (the terminal of a foreground daemon closed) stops it the way SIGTERM and
        # SIGINT do: gracefully, every box removed.  Logs are not reopened on SIGHUP.
        signal.signal(signal.SIGHUP, self._hangup)
        instance.mark_holder(self.state_lock)  # twistd may have forked to daemonize
        if self.range_lock is not None:
            instance.update_range_pid(self.range_lock)
        self.pool.start()
        go = ", ".join(f"{n}={tc.version}" for n, tc in self.toolchains.items())
        log.info("sandboxd: {driver} driver, {n} boxes, Go {go}, {cg}", driver=self.driver.name,
                 n=self.pool.settings.boxes, go=go,
                 cg=self.cgroups.describe())
        for line in self.driver.describe():
            log.info("limit mechanism: {line}", line=line)
        if self.runtime.modules is not None:
            log.info("{modules}", modules=self.runtime.modules.describe())
        if self.swept:
            log.info("removed {n} cgroups a previous daemon left", n=self.swept)
        if self.checked:
            log.info("{checked}", checked=self.checked)
        super().startService()
        for listener in self.listeners:
            if listener.port is not None:  # listening since the start (sandboxd.listening)
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
        from sandboxd.listening import describe_failure

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
        """SIGTERM: stop accepting, let running requests finish within the grace period,
        cancel the rest (each still gets its final event), close connections, remove boxes."""
        self.stopping = True
        self.factory.shutting_down = True
        service.Service.stopService(self)
        return defer.ensureDeferred(self._drain())

    async def _drain(self) -> None:
        # Request listeners close first; the rest (metrics: /healthz says 503 meanwhile) last.
        await self._stop_children([s for s in self.listeners if s.running])
        waiting = [job for job in self._jobs() if job.box is None]
        for job in waiting:
            job.cancel(SHUTDOWN_NOT_STARTED)
        running = len(self._jobs())
        if running:
            log.info("shutting down: {n} requests running; waiting up to {s} s",
                     n=running, s=self.shutdown_grace)
        if not await self._until(lambda: not self._jobs(), self.shutdown_grace):
            left = self._jobs()
            log.info("shutting down: grace period over; cancelling {n} requests", n=len(left))
            for job in left:
                job.cancel(f"the server is shutting down (the {self.shutdown_grace:g} s grace "
                           "period for running requests is over)")
            if not await self._until(lambda: not self._jobs(), SHUTDOWN_KILL_WAIT_S):
                log.warn("shutting down: {n} requests did not end", n=len(self._jobs()))
        for conn in list(self.factory.connections):
            conn.transport.loseConnection()  # after every final event is written
        if not await self._until(lambda: not self.factory.connections, SHUTDOWN_FLUSH_S):
            for conn in list(self.factory.connections):
                conn.transport.abortConnection()
        # A health probe in flight uses a spare box of its own: let it finish and remove it.
        await self._until(lambda: not self.health.probing, SHUTDOWN_FLUSH_S)
        self.pool.stop()
        held = self.runtime.held_builds
        if held is not None:  # their launchers are killed: let their cgroups and dirs go
            await self._until(lambda: not held.ending, SHUTDOWN_FLUSH_S)
        await self._stop_children([s for s in reversed(list(self)) if s.running])
        self.cgroups.remove_bases()
        log.info("sandboxd stopped; every box removed")

    async def _stop_children(self, children: list[service.Service]) -> None:
        results = await defer.DeferredList(
            [defer.maybeDeferred(child.stopService) for child in children], consumeErrors=True)
        for ok, failure in results:
            if not ok:
                log.failure("stopping a listener", failure)

    def _jobs(self) -> list[Any]:
        return [job for conn in self.factory.connections for job in conn.jobs.values()]

    async def _until(self, condition: Any, seconds: float) -> bool:
        """Poll ``condition`` until it holds (True) or ``seconds`` pass (False)."""
        deadline = self.reactor.seconds() + seconds
        while not condition():
            if self.reactor.seconds() >= deadline:
                return False
            await task.deferLater(self.reactor, SHUTDOWN_POLL_S, lambda: None)
        return True


def _exit_failed() -> None:
    """After a clean shutdown (boxes removed), end with status 1: twistd has no exit code."""
    import sys

    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(1)


def _instance_name(state_dir: Path) -> str:
    """A cgroup name per state directory, so two daemons never sweep each other's boxes."""
    import hashlib

    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]


def _raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
