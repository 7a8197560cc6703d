"""A box: one sandbox identity (number, uid, files) that one request at a time runs in."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Box:
    """A box's identity and bookkeeping; the driver owns what it is on disk."""

    number: int
    uid: int
    gid: int
    workspace: Path  # on the host; the program sees it as /box
    session_id: str | None = None
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    in_use: bool = False
    runs: int = 0
    expired: bool = False

    def __str__(self) -> str:
        owner = f" session={self.session_id}" if self.session_id else ""
        return f"box {self.number}{owner}"
