"""Time as events and children stamp it."""

from __future__ import annotations

import time


def now_ms() -> str:
    """Unix milliseconds as a string, as the original service sent them."""
    return str(time.time_ns() // 1_000_000)


def ms_after(seconds: float) -> str:
    """Unix milliseconds ``seconds`` from now, as a string (``now_ms``'s style)."""
    return str(time.time_ns() // 1_000_000 + int(seconds * 1000))
