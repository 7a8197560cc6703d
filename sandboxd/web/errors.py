"""Refusals over HTTP: a 4xx (or 5xx) status with one line-protocol ``bad_request`` event."""

from __future__ import annotations

from typing import Any

from sandboxd.status import Phase, Status
from sandboxd.wire.events import encode, final_event

REASONS = {421: b"Misdirected Request", 413: b"Content Too Large"}


def refuse(request: Any, code: int, message: str, status: Status = Status.BAD_REQUEST,
           request_id: str | None = None, **fields: Any) -> bytes:
    """Answer ``request`` with HTTP ``code`` and a final event saying why; the body to return."""
    request.setResponseCode(code, REASONS.get(code))
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return encode(final_event(request_id, status, message, Phase.QUEUE, **fields))
