"""Builds held ahead: each ready box gets its next build's launcher started before any request.

A new program's build used to begin with its launcher joining the build's cgroup, and on a
cgroup v1 host the first task move after a quiet moment waits for an RCU grace period (~6 ms,
measured: `docs/performance.md`).  So while a box waits for a request, its build is prepared:
the build's own directory (a tmpfs: ``src`` empty, ``out`` for the box's uid), its cgroup with
the default build limits, and the launcher, joined and waiting on a pipe.  Nothing runs as the
box's uid and no sandbox exists yet.  A request that builds with exactly those settings writes
its files into ``src`` and lets the launcher go.  Any other request (another toolchain, other
build limits, modules, tests, fmt, vet, a cached binary) leaves it alone: it stays with the box
through the wipe after that request, and is abandoned only when the box is destroyed.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sandboxd.boxes import hostfs
from sandboxd.boxes.box import Box
from sandboxd.golang.toolchain import (
    GOCACHE_INSIDE,
    GOROOT_INSIDE,
    OUTPUT_INSIDE,
    SOURCE_INSIDE,
    Toolchain,
)
from sandboxd.jobs.output import Collector
from sandboxd.limits import PhaseLimits
from sandboxd.sandbox import cgroup
from sandboxd.sandbox.cgroup import CgroupSupport
from sandboxd.sandbox.child import ChildResult, SandboxChild
from sandboxd.sandbox.driver import Driver, Mount, SandboxRun
from sandboxd.status import Phase

log = Logger()

Sink = Callable[[str, bytes, str], int]
_serial = itertools.count(1)


def make_job_dir(path: Path, disk_mb: int) -> None:
    """A build's own directory: a tmpfs of the build's ``disk_mb``, bounded in inodes too."""
    hostfs.make_scratch_dir(path, *hostfs.tmpfs_bounds(disk_mb, min_inodes=256))


def build_mounts(tc: Toolchain, job_dir: Path) -> list[Mount]:
    """What every build sees: the toolchain and std cache read-only, its source read-only at
    /src, and /out, the only place it writes (besides its own /tmp)."""
    return [Mount(tc.goroot, GOROOT_INSIDE), Mount(tc.std_cache, GOCACHE_INSIDE),
            Mount(job_dir / "src", SOURCE_INSIDE),
            Mount(job_dir / "out", OUTPUT_INSIDE, writable=True)]


def remove_job_dir(path: Path) -> None:
    try:
        hostfs.remove_scratch_dir(path)
    except Exception:
        log.failure("removing {dir}", dir=path)


@dataclass(eq=False)
class HeldBuild:
    """One box's build, launched and waiting (see the module's docstring)."""

    child: SandboxChild
    done: defer.Deferred[ChildResult]
    job_dir: Path
    early: Collector  # what the launcher said before a request took it (why it died)

    @property
    def alive(self) -> bool:
        return not self.done.called

    def untouched(self) -> bool:
        """Its writable places are as empty as they were made.  Requests of other settings
        may have used the box meanwhile; none could see these directories, but the build
        must not be the one that trusts that."""
        places = [self.job_dir / "src", self.job_dir / "out"]
        tmp = self.child.run.tmp
        if tmp is not None:
            places += [tmp / "tmp", tmp / "shm"]
        try:
            return not any(os.listdir(place) for place in places)
        except OSError:
            return False

    def start(self, files: dict[str, bytes], sink: Sink, paused: bool) -> defer.Deferred:
        """The request's files into ``src``, its sink for the output: let the build begin.
        If the files cannot be written the launcher is killed unused (and the error raised)."""
        try:
            hostfs.write_tree(self.job_dir / "src", files)
        except BaseException:
            self.child.abandon()
            raise
        self.child.sink = sink
        if paused:
            self.child.pauseProducing()
        self.child.release()
        return self.done

    def abandon(self) -> defer.Deferred[None]:
        """Unused: kill the launcher (it never started a sandbox), then remove its directory
        (its cgroup goes when the child ends).  Fires when both are gone."""
        self.child.abandon()
        ended: defer.Deferred[None] = defer.Deferred()
        self.done.addBoth(lambda _: (remove_job_dir(self.job_dir), ended.callback(None)))
        return ended


class HeldBuilds:
    """The builds held ahead, one per ready box, for requests with the default settings."""

    def __init__(self, reactor: Any, driver: Driver, cgroups: CgroupSupport,
                 toolchain: Toolchain, limits: PhaseLimits, jobs_dir: Path) -> None:
        self.reactor = reactor
        self.driver = driver
        self.cgroups = cgroups
        self.toolchain = toolchain
        self.limits = limits
        self.jobs_dir = jobs_dir
        self.held: dict[int, HeldBuild] = {}
        # Abandoned, not yet gone, with the Deferred of each one's end (a shutdown waits).
        self.ending: dict[HeldBuild, defer.Deferred] = {}
        self.used = 0  # requests that built in a build held ahead
        self.abandoned = 0  # held builds ended unused (their box destroyed, or it had died)
        # Only where a launcher exists to hold: a cgroup of the daemon's own to join.
        self.enabled = cgroups.version is not None and not driver.own_cgroups

    def hold(self, box: Box) -> None:
        """Launch ``box``'s next build now; it waits for ``take``."""
        if not self.enabled or box.session_id is not None or box.number in self.held:
            return
        serial = next(_serial)
        job_dir = self.jobs_dir / f"ahead-{box.number}-{serial}"
        make_job_dir(job_dir, self.limits.disk_mb)
        try:
            hostfs.make_private_dir(job_dir / "src", 0, 0, 0o755)
            hostfs.make_private_dir(job_dir / "out", box.uid, box.gid, 0o700)
            tc = self.toolchain
            run = SandboxRun(
                phase=Phase.BUILD, box=box, argv=tc.build_argv(), env=tc.build_env(),
                cwd=SOURCE_INSIDE, limits=self.limits, mounts=build_mounts(tc, job_dir),
                with_workspace=False, hold_launcher=True,
                tag=f"ahead{serial}",  # its /tmp outlives neither it nor a later one's
            )
            name = cgroup.run_name("build", f"ahead{box.number}-{serial}")
            run.cgroup = self.cgroups.create(name, self.limits)
            early = Collector(4096)  # a launcher says little; keep it bounded
            child = SandboxChild(self.reactor, self.driver, run, early)
            done = child.start()
        except Exception:
            log.failure("holding a build ahead for {box}", box=box)
            remove_job_dir(job_dir)
            return
        held = HeldBuild(child, done, job_dir, early)
        done.addErrback(lambda f: log.failure("a build held ahead for {box}", f, box=box))
        self.held[box.number] = held

    def take(self, box: Box) -> HeldBuild | None:
        """``box``'s held build, now the caller's to ``start``; None when there is none or
        it is no longer as it was made (then it is abandoned and the caller builds the usual
        way)."""
        held = self.held.pop(box.number, None)
        if held is None:
            return None
        if not held.alive:
            said = held.early.joined()[-1024:].decode("utf-8", "replace").strip()
            log.info("the build held ahead for {box} had ended ({said}); building the usual "
                     "way", box=box, said=said or "it said nothing")
        elif not held.untouched():
            log.warn("the build held ahead for {box} has files it was not given; "
                     "abandoned", box=box)
        else:
            self.used += 1
            return held
        self.abandon(held)
        return None

    def abandon(self, held: HeldBuild) -> None:
        self.abandoned += 1
        done = self.ending[held] = held.abandon()
        done.addBoth(lambda result: (self.ending.pop(held, None), result)[1])

    def retire(self, box: Box) -> None:
        """``box`` is being destroyed: its held build goes first."""
        held = self.held.pop(box.number, None)
        if held is not None:
            self.abandon(held)
