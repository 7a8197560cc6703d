"""The daemon's settings: ``twistd sandboxd``'s options, parsed once (``tap.Options``) and read
here into one frozen value that the assembly (``sandboxd.service.assemble``) builds from."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sandboxd.limits import LimitPolicy


def default_node_name() -> str:
    """The host name, made to fit --node-name's rule (1-64 of A-Z a-z 0-9 . _ -)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:64]
    return name or "sandboxd"


@dataclass(frozen=True)
class Settings:
    """Everything the parts of a daemon are made from (the listeners' endpoints aside)."""

    policy: LimitPolicy
    sandbox: str
    boxes: int
    state_dir: Path
    cache_dir: Path
    go: str | None = None
    more_go: dict[str, str] = field(default_factory=dict)
    max_queue: int = 100
    max_sessions: int = 256
    first_uid: int = 60000
    first_box: int = 0
    session_idle: float = 1200
    session_max_age: float = 1800
    cleanup_period: float = 300
    binary_cache_mb: int = 512
    max_line_bytes: int = 2 * 1024 * 1024
    max_pending_input: int = 128 * 1024 * 1024
    max_connections: int = 4096
    max_source_bytes: int = 512 * 1024
    max_files: int = 20
    max_stdin_bytes: int = 1024 * 1024
    gomodcache: str | None = None
    goproxy: str | None = None
    idle_timeout: float | None = 600
    shutdown_grace: float = 10
    cgroups: str = "auto"
    hold_builds: bool = True
    max_queue_per_client: int = 10
    max_sessions_per_client: int = 16
    client_identity: str = "connection"
    max_box_memory_mb: int | None = None
    drain_time: float = 0
    node_name: str | None = None  # None: the host name (default_node_name)
    goimports: str = "auto"  # auto, off or a path under /usr (formatter.goimports_option)

    @classmethod
    def from_options(cls, options: Any) -> Settings:
        """The settings that checked ``tap.Options`` give: each field is the option of its
        name (``max_queue``: ``--max-queue``), but for the few read another way."""
        read_otherwise = {
            "hold_builds": options["held-builds"] == "on",
            "state_dir": Path(options["state-dir"]),
            "cache_dir": Path(options["cache-dir"]),
            "more_go": dict(options["more-go"]),
            "max_pending_input": options["max-pending-input-mb"] * 1024 * 1024,
        }
        return cls(**{f.name: read_otherwise[f.name] if f.name in read_otherwise
                      else options[f.name.replace("_", "-")] for f in fields(cls)})
