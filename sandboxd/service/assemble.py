"""Assembling a daemon's parts from its settings, once, in order: the slow and the fallible
steps (locks, the driver and its tools, the box range, the toolchains and their standard-library
warm, cgroups, the sweep of a dead daemon's leftovers, the pool, the runtime) happen here, so
that ``SandboxDaemon``'s constructor only wires what is made."""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from sandboxd.boxes import hostfs
from sandboxd.boxes.pool import MAX_BOX_NUMBER, BoxPool, PoolSettings
from sandboxd.golang import formatter, toolchain
from sandboxd.golang.modules import ModuleSource
from sandboxd.golang.toolchain import Toolchain
from sandboxd.jobs.bincache import BinaryCache
from sandboxd.jobs.heldbuild import HeldBuilds
from sandboxd.jobs.metrics import Metrics
from sandboxd.jobs.runtime import Runtime
from sandboxd.sandbox import cgroup
from sandboxd.sandbox.driver import Driver
from sandboxd.sandbox.drivers import DriverError, choose
from sandboxd.service import instance
from sandboxd.service.settings import Settings, default_node_name

log = Logger()


@dataclass
class Parts:
    """What the assembly made; the daemon owns it from then on."""

    state_lock: Any
    range_lock: int | None
    driver: Driver
    check_box: int  # the start-up check's box number, past the pool's
    toolchains: dict[str, Toolchain]
    toolchains_dir: Path
    cgroups: cgroup.CgroupSupport
    swept: int  # cgroups a previous daemon left, removed
    pool: BoxPool
    runtime: Runtime


def assemble(settings: Settings, reactor: Any) -> Parts:
    """The parts, made in the order that leaves nothing behind when a step fails for an
    operator's reason (everything before the cgroups)."""
    s = settings
    _raise_open_files()
    # Before anything of the state directory is touched (the sweep of a dead daemon's
    # leftovers above all): one daemon per state directory.
    state_lock = instance.lock_state_dir(s.state_dir)
    os.chmod(s.state_dir, 0o711)
    # Nothing that can fail for an operator's reason comes after the cgroups are made
    # (they would be left behind): the driver (its tools), the box range, the toolchains.
    driver, check_box, range_lock = _driver_and_range(s)
    toolchains_dir = s.state_dir / "toolchains"
    toolchains = _toolchains(s, driver, toolchains_dir)
    cgroups = _cgroups(s)
    driver.cgroups = cgroups
    # The lock is ours: whatever a previous daemon of this state directory left (it was
    # killed) can go now, before this one makes anything.
    swept = cgroups.sweep()  # logged once logging has begun (startService)
    driver.sweep()
    jobs_dir = _fresh_jobs_dir(s.state_dir / "jobs")
    pool = BoxPool(driver, PoolSettings(
        boxes=s.boxes,
        max_queue=s.max_queue,
        max_sessions=s.max_sessions,
        max_queue_per_client=s.max_queue_per_client,
        max_sessions_per_client=s.max_sessions_per_client,
        max_box_memory_mb=s.max_box_memory_mb or default_box_memory_mb(),
        session_idle_s=s.session_idle,
        session_max_age_s=s.session_max_age,
        cleanup_period_s=s.cleanup_period,
        disk_mb=s.policy.defaults.run.disk_mb,
        first_box=s.first_box,
    ), reactor)
    default = next(iter(toolchains.values()))
    runtime = Runtime(
        reactor=reactor,
        driver=driver,
        pool=pool,
        cgroups=cgroups,
        toolchain=default,
        binaries=BinaryCache(s.state_dir / "binaries", s.binary_cache_mb * 1024 * 1024),
        jobs_dir=jobs_dir,
        metrics=Metrics(),
        toolchains=toolchains,
        modules=(ModuleSource(cache=Path(s.gomodcache).resolve()) if s.gomodcache
                 else ModuleSource(proxy=s.goproxy) if s.goproxy else None),
        node=s.node_name or default_node_name(),
        goimports=formatter.find_goimports(s.goimports),
    )
    if s.hold_builds:
        held = runtime.held_builds = HeldBuilds(
            reactor, driver, cgroups, default, s.policy.defaults.build, jobs_dir)
        pool.on_ready = held.hold
        pool.on_retire = held.retire
    return Parts(state_lock=state_lock, range_lock=range_lock, driver=driver,
                 check_box=check_box, toolchains=toolchains, toolchains_dir=toolchains_dir,
                 cgroups=cgroups, swept=swept, pool=pool, runtime=runtime)


def _driver_and_range(s: Settings) -> tuple[Driver, int, int | None]:
    """The driver, the start-up check's box number and the registration of the box range."""
    driver = choose(s.sandbox, state_dir=s.state_dir, cgroups=cgroup.CgroupSupport(
        None, {}, "not looked for yet"), first_uid=s.first_uid)
    # The pool's box numbers, then one more: the start-up check's (sandboxd.service.selfcheck).
    check_box = s.first_box + min(MAX_BOX_NUMBER, 3 * s.boxes + s.max_sessions + 2)
    driver.check_box_range(s.first_box, check_box - s.first_box + 1)
    if s.cgroups == "isolate":
        if driver.name != "isolate":
            raise DriverError("--cgroups=isolate needs the isolate driver")
        driver.own_cgroups = True
    # Those box numbers (the pool's: 3 x boxes + max_sessions + 2, and the check's): no
    # other running daemon may use their uids.
    range_lock = instance.register_range(s.state_dir, instance.Range(
        s.first_box, check_box, driver.uid_for(s.first_box), driver.uid_for(check_box)))
    return driver, check_box, range_lock


def _fresh_jobs_dir(jobs_dir: Path) -> Path:
    """The build directories' parent, emptied of a dead daemon's (tmpfs mounts and all)."""
    if jobs_dir.is_dir() and not jobs_dir.is_symlink():
        for entry in jobs_dir.iterdir():
            hostfs.remove_scratch_dir(entry)
    hostfs.remove_tree(jobs_dir)
    jobs_dir.mkdir(mode=0o711)
    return jobs_dir


def _toolchains(s: Settings, driver: Driver, toolchains_dir: Path) -> dict[str, Toolchain]:
    """The default toolchain first, then the others (--more-go), each with its warm
    standard-library cache, mounted as read-only images where the host allows."""
    default = toolchain.load(toolchain.find_goroot(s.go), s.cache_dir)
    toolchains = {default.name: default}
    for name, path in s.more_go.items():
        toolchains[name] = toolchain.load(toolchain.find_goroot(path), s.cache_dir, name)
    for tc in toolchains.values():  # each has its own standard-library cache
        toolchain.warm(tc, driver, quiet=False)
    toolchain.unmount_images(toolchains_dir)  # a dead daemon's
    try:
        return {name: toolchain.mount_images(tc, toolchains_dir)
                for name, tc in toolchains.items()}
    except (OSError, subprocess.SubprocessError) as e:
        toolchain.unmount_images(toolchains_dir)
        log.warn("cannot mount the toolchain's images ({e}); builds see the cache "
                 "directory's path in their mount table", e=e)
        return toolchains


def _cgroups(s: Settings) -> cgroup.CgroupSupport:
    if s.cgroups == "off":
        return cgroup.CgroupSupport(None, {}, "turned off with --cgroups=off")
    if s.cgroups == "isolate":
        return cgroup.CgroupSupport(None, {}, "isolate --cg makes the cgroups")
    return cgroup.detect(f"sandboxd-{instance_name(s.state_dir)}")


def default_box_memory_mb(meminfo: str = "/proc/meminfo") -> int:
    """A quarter of the machine's memory: what session boxes may hold by default."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemTotal:"):
                return max(64, int(line.split()[1]) // 1024 // 4)
    except (OSError, ValueError, IndexError):
        pass
    return 1024


def instance_name(state_dir: Path) -> str:
    """A cgroup name per state directory, so two daemons never sweep each other's boxes."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]


def _raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
