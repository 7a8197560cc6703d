"""Everything a job needs from the daemon, built once at start."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from sandboxd.boxes.pool import BoxPool
from sandboxd.golang.modules import ModuleSource
from sandboxd.golang.toolchain import (
    Toolchain,
)
from sandboxd.jobs.bincache import BinaryCache
from sandboxd.jobs.build import BuildOutcome
from sandboxd.jobs.heldbuild import (
    HeldBuilds,
)
from sandboxd.jobs.metrics import Metrics
from sandboxd.jobs.singleflight import SingleFlight
from sandboxd.sandbox.cgroup import CgroupSupport
from sandboxd.sandbox.driver import Driver

log = Logger()


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
    node: str | None = None  # --node-name: every request's final event names its daemon
    goimports: str | None = None  # where boxes find goimports (fmt with imports); None: none
    # Clean-ups put off until a request's final event is written (its build and program
    # directories): a shutdown waits for them before it sweeps what is left.
    put_off: set[defer.Deferred[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.toolchains.setdefault(self.toolchain.name, self.toolchain)

    def later(self, delay: float, clean_up: Callable[..., object], *args: Any) -> None:
        """``clean_up(*args)`` after ``delay`` seconds, kept in ``put_off`` until it ran."""
        d = task.deferLater(self.reactor, delay, clean_up, *args)
        self.put_off.add(d)
        d.addErrback(lambda failure: log.failure("a put-off clean-up", failure))
        d.addBoth(lambda _: self.put_off.discard(d))

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n
