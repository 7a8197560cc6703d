"""Resource limits: the operator's defaults and maximums, and what one request asks for.

A request may lower any limit, never raise it past the operator's maximum.  Every limit, its
unit and its default is listed in docs/protocol.md; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

PHASES = ("build", "run")


@dataclass(frozen=True)
class PhaseLimits:
    """Limits for one phase (the build or the run) of a request."""

    wall_ms: int  # wall-clock time
    cpu_ms: int  # CPU time, all processes and threads of the phase together
    memory_mb: int  # memory (RSS + page cache + tmpfs); address space without cgroups
    processes: int  # processes and threads at once
    file_size_mb: int  # largest file the phase may write
    disk_mb: int  # everything written into the box, /tmp and /dev/shm
    open_files: int  # open file descriptors per process

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


PHASE_LIMIT_NAMES = tuple(f.name for f in fields(PhaseLimits))


@dataclass(frozen=True)
class Limits:
    """All limits of one request."""

    build: PhaseLimits
    run: PhaseLimits
    output_bytes: int  # output streamed to the client, both phases together

    def phase(self, name: str) -> PhaseLimits:
        return self.build if name == "build" else self.run

    def as_dict(self) -> dict[str, Any]:
        return {
            "build": self.build.as_dict(),
            "run": self.run.as_dict(),
            "output_bytes": self.output_bytes,
        }


DEFAULT_LIMITS = Limits(
    build=PhaseLimits(
        wall_ms=30_000,
        cpu_ms=60_000,
        memory_mb=1024,
        processes=512,
        file_size_mb=128,
        disk_mb=256,
        open_files=1024,
    ),
    run=PhaseLimits(
        wall_ms=10_000,
        cpu_ms=10_000,
        memory_mb=256,
        processes=256,
        file_size_mb=10,
        disk_mb=64,
        open_files=256,
    ),
    output_bytes=4 * 1024 * 1024,
)

MAXIMUM_LIMITS = Limits(
    build=PhaseLimits(
        wall_ms=120_000,
        cpu_ms=240_000,
        memory_mb=4096,
        processes=2048,
        file_size_mb=512,
        disk_mb=1024,
        open_files=4096,
    ),
    run=PhaseLimits(
        wall_ms=300_000,
        cpu_ms=300_000,
        memory_mb=4096,
        processes=1024,
        file_size_mb=1024,
        disk_mb=1024,
        open_files=4096,
    ),
    output_bytes=64 * 1024 * 1024,
)

# Below these a Go program or its build cannot work at all; asking for less is a bad request.
MINIMUM_LIMITS = Limits(
    build=PhaseLimits(
        wall_ms=100, cpu_ms=100, memory_mb=32, processes=16, file_size_mb=1, disk_mb=1,
        open_files=32,
    ),
    run=PhaseLimits(
        wall_ms=10, cpu_ms=10, memory_mb=8, processes=8, file_size_mb=1, disk_mb=1, open_files=16
    ),
    output_bytes=0,
)


class LimitError(ValueError):
    """A limit that makes no sense; the message says which and why."""


@dataclass
class LimitPolicy:
    """The operator's defaults and maximums; turns a request's ``limits`` into ``Limits``."""

    defaults: Limits = DEFAULT_LIMITS
    maximums: Limits = MAXIMUM_LIMITS
    minimums: Limits = field(default=MINIMUM_LIMITS)

    def __post_init__(self) -> None:
        self.defaults = self._clamp_defaults(self.defaults)

    def _clamp_defaults(self, limits: Limits) -> Limits:
        phases = {}
        for phase in PHASES:
            want, most = limits.phase(phase), self.maximums.phase(phase)
            phases[phase] = replace(
                want, **{n: min(getattr(want, n), getattr(most, n)) for n in PHASE_LIMIT_NAMES}
            )
        return Limits(
            output_bytes=min(limits.output_bytes, self.maximums.output_bytes), **phases
        )

    def with_setting(self, key: str, value: int, maximum: bool = False) -> LimitPolicy:
        """The policy with one default (or maximum) changed: ``key`` is ``run.wall_ms`` style."""
        target = self.maximums if maximum else self.defaults
        if key == "output_bytes":
            changed = replace(target, output_bytes=value)
        else:
            phase, _, name = key.partition(".")
            if phase not in PHASES or name not in PHASE_LIMIT_NAMES:
                raise LimitError(f"unknown limit {key!r}")
            changed = replace(target, **{phase: replace(target.phase(phase), **{name: value})})
        least = (self.minimums.output_bytes if key == "output_bytes"
                 else getattr(self.minimums.phase(key.partition(".")[0]), key.partition(".")[2]))
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise LimitError(f"limit {key} is {value}, below the least that can work ({least})")
        if not maximum:
            most = (self.maximums.output_bytes if key == "output_bytes"
                    else getattr(self.maximums.phase(key.partition(".")[0]),
                                 key.partition(".")[2]))
            if value > most:
                # Lowering it silently would run requests with a limit nobody asked for.
                raise LimitError(f"--limit {key}={value} is above its maximum ({most}); "
                                 f"raise the maximum too: --max-limit {key}={value}")
        if maximum:
            return LimitPolicy(self.defaults, changed, self.minimums)
        return LimitPolicy(changed, self.maximums, self.minimums)

    def resolve(self, asked: Any) -> Limits:
        """The limits for one request; ``asked`` is the request's ``limits`` value (or None).

        Accepted shapes: ``{"build": {...}, "run": {...}, "output_bytes": N}``; phase limit
        names at the top level mean the run phase.
        """
        if asked is None:
            return self.defaults
        if not isinstance(asked, dict):
            raise LimitError("limits must be an object")
        run_asked: dict[str, Any] = {}
        build_asked: dict[str, Any] = {}
        output = self.defaults.output_bytes
        for key, value in asked.items():
            if key in PHASES:
                if not isinstance(value, dict):
                    raise LimitError(f"limits.{key} must be an object")
                (build_asked if key == "build" else run_asked).update(
                    {f"{key}.{k}": (k, v) for k, v in value.items()}
                )
            elif key == "output_bytes":
                output = self._number("output_bytes", value, self.maximums.output_bytes,
                                      self.minimums.output_bytes)
            elif key in PHASE_LIMIT_NAMES:
                run_asked[f"run.{key}"] = (key, value)
            else:
                raise LimitError(f"unknown limit {key!r}")
        phases = {}
        for phase, asked_phase in (("build", build_asked), ("run", run_asked)):
            base = self.defaults.phase(phase)
            changes = {}
            for label, (name, value) in asked_phase.items():
                if name not in PHASE_LIMIT_NAMES:
                    raise LimitError(f"unknown limit {label!r}")
                changes[name] = self._number(
                    label,
                    value,
                    getattr(self.maximums.phase(phase), name),
                    getattr(self.minimums.phase(phase), name),
                )
            phases[phase] = replace(base, **changes)
        return Limits(output_bytes=output, **phases)

    @staticmethod
    def _number(label: str, value: Any, most: int, least: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LimitError(f"limit {label} must be a whole number")
        if value < least:
            raise LimitError(f"limit {label} is {value}, below the least that can work ({least})")
        if value > most:
            raise LimitError(f"limit {label} is {value}, above this server's maximum ({most})")
        return value
