"""Sandbox drivers: how a box is made, entered and wiped (isolate or bubblewrap)."""

from __future__ import annotations

import shutil

from sandboxd.sandbox.driver import Driver, DriverError, Mount, Report, SandboxRun

__all__ = ["Driver", "DriverError", "Mount", "Report", "SandboxRun", "choose"]


def choose(name: str, **options: object) -> Driver:
    """The driver for ``--sandbox``: ``auto`` takes isolate when it is installed."""
    if name == "auto":
        name = "isolate" if shutil.which("isolate") else "bubblewrap"
    if name == "isolate":
        from sandboxd.sandbox.isolate import IsolateDriver

        return IsolateDriver(**options)  # type: ignore[arg-type]
    if name == "bubblewrap":
        from sandboxd.sandbox.bubblewrap import BubblewrapDriver

        return BubblewrapDriver(**options)  # type: ignore[arg-type]
    raise DriverError(f"unknown sandbox {name!r} (auto, isolate or bubblewrap)")
