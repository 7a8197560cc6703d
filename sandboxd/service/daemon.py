"""The daemon: builds the runtime (driver, cgroups, toolchain, caches, pool) and owns it."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet import reactor as default_reactor
from twisted.logger import Logger

from sandboxd.boxes import hostfs
from sandboxd.boxes.pool import MAX_BOX_NUMBER, BoxPool, PoolSettings
from sandboxd.golang import toolchain
from sandboxd.golang.modules import ModuleSource
from sandboxd.jobs.bincache import BinaryCache
from sandboxd.jobs.heldbuild import HeldBuilds
from sandboxd.jobs.job import Runtime
from sandboxd.jobs.metrics import Metrics
from sandboxd.jobs.submit import Requests, all_fired
from sandboxd.limits import LimitPolicy
from sandboxd.sandbox import cgroup
from sandboxd.sandbox.drivers import DriverError, choose
from sandboxd.service import instance
from sandboxd.service.health import HealthCheck
from sandboxd.service.metrics import watch
from sandboxd.wire.connection import SHUTDOWN_NOT_STARTED, ConnectionFactory
from sandboxd.wire.request import SourceLimits

log = Logger()

SHUTDOWN_POLL_S = 0.05
SHUTDOWN_KILL_WAIT_S = 10.0  # cancelled requests: their boxes are killed, this is a hang bound
SHUTDOWN_FLUSH_S = 5.0  # connections get this long to take their last events
BASE_MARGIN_MB = 256  # launchers held ahead, the health probe: over the boxes' own bounds


def default_box_memory_mb(meminfo: str = "/proc/meminfo") -> int:
    """A quarter of the machine's memory: what session boxes may hold by default."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemTotal:"):
                return max(64, int(line.split()[1]) // 1024 // 4)
    except (OSError, ValueError, IndexError):
        pass
    return 1024


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
        max_queue_per_client: int = 10,
        max_sessions_per_client: int = 16,
        client_identity: str = "connection",
        max_box_memory_mb: int | None = None,
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
        self.state_dir = state_dir
        self.range_lock: int | None = None
        os.chmod(state_dir, 0o711)
        # Nothing that can fail for an operator's reason comes after the cgroups are made
        # (they would be left behind): the driver (its tools), the box range, the toolchains.
        self.driver = choose(sandbox, state_dir=state_dir, cgroups=cgroup.CgroupSupport(
            None, {}, "not looked for yet"), first_uid=first_uid)
        # The pool's box numbers, then one more: the start-up check's (sandboxd.service.selfcheck).
        self.check_box = first_box + min(MAX_BOX_NUMBER, 3 * boxes + max_sessions + 2)
        self.driver.check_box_range(first_box, self.check_box - first_box + 1)
        if cgroups == "isolate":
            if self.driver.name != "isolate":
                raise DriverError("--cgroups=isolate needs the isolate driver")
            self.driver.own_cgroups = True
        # Those box numbers (the pool's: 3 x boxes + max_sessions + 2, and the check's): no
        # other running daemon may use their uids.
        last_box = self.check_box
        self.range_lock = instance.register_range(state_dir, instance.Range(
            first_box, last_box, self.driver.uid_for(first_box), self.driver.uid_for(last_box)))
        self.toolchain = toolchain.load(toolchain.find_goroot(go), cache_dir)
        self.toolchains = {self.toolchain.name: self.toolchain}
        for name, path in (more_go or {}).items():
            self.toolchains[name] = toolchain.load(toolchain.find_goroot(path), cache_dir, name)
        for tc in self.toolchains.values():  # each has its own standard-library cache
            toolchain.warm(tc, self.driver, quiet=False)
        self.toolchains_dir = state_dir / "toolchains"
        toolchain.unmount_images(self.toolchains_dir)  # a dead daemon's
        try:
            self.toolchains = {name: toolchain.mount_images(tc, self.toolchains_dir)
                               for name, tc in self.toolchains.items()}
        except (OSError, subprocess.SubprocessError) as e:
            toolchain.unmount_images(self.toolchains_dir)
            log.warn("cannot mount the toolchain's images ({e}); builds see the cache "
                     "directory's path in their mount table", e=e)
        self.toolchain = self.toolchains[self.toolchain.name]
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
                max_queue_per_client=max_queue_per_client,
                max_sessions_per_client=max_sessions_per_client,
                max_box_memory_mb=max_box_memory_mb or default_box_memory_mb(),
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
        watch(self.runtime.metrics, self)
        self.health = HealthCheck(self)
        self.checked = ""  # what the start-up check found (see ``check``)
        self.factory = ConnectionFactory(
            Requests(self.runtime),
            policy,
            SourceLimits(max_bytes=max_source_bytes, max_files=max_files,
                         max_stdin_bytes=max_stdin_bytes),
            max_line_bytes=max_line_bytes,
            idle_timeout=idle_timeout,
            max_pending_input=max_pending_input,
            max_connections=max_connections,
            client_identity=client_identity,
        )

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
        if not await self.factory.requests.ended(self.shutdown_grace, self.reactor):
            left = self._jobs()
            log.info("shutting down: grace period over; cancelling {n} requests", n=len(left))
            for job in left:
                job.cancel(f"the server is shutting down (the {self.shutdown_grace:g} s grace "
                           "period for running requests is over)")
            if not await self.factory.requests.ended(SHUTDOWN_KILL_WAIT_S, self.reactor):
                log.warn("shutting down: {n} requests did not end", n=len(self._jobs()))
        for conn in list(self.factory.connections):
            conn.transport.loseConnection()  # after every final event is written
        if not await self._until(lambda: not self.factory.connections, SHUTDOWN_FLUSH_S):
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
