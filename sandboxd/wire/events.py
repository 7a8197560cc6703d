"""Events: what travels back to the client, one JSON object per line.

Output events keep the original service's four fields (``output``, ``exec_err``, ``is_error``,
``timestamp``) and add ``id``, ``stream`` and ``phase``.  Program output is bytes; JSON carries
text.  Valid UTF-8 travels as it is, except that every control character (C0,
DEL, C1) and U+2028/U+2029 travels as a ``\\u`` escape (see ``encode``).  A chunk
holding bytes that are not UTF-8 carries them as U+FFFD in ``output`` and exactly, base64, in
``output_base64``.  A character split across two reads is held back until it is whole.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from sandboxd.clock import now_ms
from sandboxd.status import Phase, Status

# What JSON itself leaves raw but a terminal or a JavaScript reader acts on: DEL, the C1
# controls (U+0085 NEL, U+009B CSI, ...), and U+2028/U+2029 (line breaks to some JavaScript
# parsers and editors).  JSON only requires escaping U+0000-U+001F, which json.dumps does.
_UNSAFE = re.compile("[\u007f-\u009f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def encode(event: dict[str, Any]) -> bytes:
    """One event as one line: compact JSON, UTF-8, non-ASCII text as it is, and every
    control character (C0, DEL, C1) and U+2028/U+2029 as a \\u escape.  The only place the
    daemon turns anything into a line for a client.  These characters can only stand inside
    JSON strings here (keys and values; never in the syntax), where an escape means the same
    character, so replacing them in the whole line is exact."""
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return escape_json_text(text).encode("utf-8") + b"\n"


def escape_json_text(text: str) -> str:
    """JSON text (``json.dumps`` output) with DEL, C1 and U+2028/U+2029 as ``\\u`` escapes:
    they can only stand inside its strings, where the escape means the same character."""
    return _UNSAFE.sub(_escape, text)


class StreamDecoder:
    """Turns one stream's chunks into text without splitting a UTF-8 character."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> tuple[str, bytes | None]:
        """Text ready to send, and the exact bytes when they were not all valid UTF-8."""
        data = self._pending + chunk
        cut = _complete_prefix(data)
        self._pending = data[cut:]
        return _decode(data[:cut])

    def flush(self) -> tuple[str, bytes | None]:
        data, self._pending = self._pending, b""
        return _decode(data)


def _complete_prefix(data: bytes) -> int:
    """Length of ``data`` without a trailing, still incomplete UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if 0xC2 <= byte <= 0xF4:  # a byte that can start a character
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if back < need else len(data)
        if byte >= 0xC0:  # never valid in UTF-8: nothing to wait for
            return len(data)
    return len(data)


def _decode(data: bytes) -> tuple[str, bytes | None]:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), data


def output_event(
    request_id: str,
    stream: str,
    phase: Phase,
    text: str,
    raw: bytes | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": request_id,
        "stream": stream,
        "phase": str(phase),
        "output": text,
        "exec_err": "",
        "is_error": stream == "stderr",
        "timestamp": timestamp or now_ms(),
    }
    if raw is not None:
        event["output_base64"] = base64.b64encode(raw).decode("ascii")
    return event


def test_event(
    request_id: str,
    action: str,
    test: str | None,
    elapsed: float | None = None,
    output: bytes | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """One per-test event (``test_json``): a test's action, as ``go test -json`` has them."""
    event: dict[str, Any] = {"id": request_id, "phase": str(Phase.RUN), "action": action,
                             "test": test}
    if elapsed is not None:
        event["elapsed"] = elapsed
    if output is not None:
        text, raw = _decode(output)
        event["output"] = text
        if raw is not None:
            event["output_base64"] = base64.b64encode(raw).decode("ascii")
    event["timestamp"] = timestamp or now_ms()
    return event


def final_event(
    request_id: str | None,
    status: Status,
    message: str,
    phase: Phase,
    **fields: Any,
) -> dict[str, Any]:
    """The one event that ends a request."""
    event: dict[str, Any] = {
        "id": request_id,
        "done": True,
        "status": str(status),
        "message": message,
        "phase": str(phase),
        "exit_code": None,
        "time_ms": None,
        "wall_ms": None,
        "memory_kb": None,
        "signal": None,
        "build_ms": None,
        "cached": False,
        "output_bytes": 0,
        "output": "",
        "exec_err": message if status.is_error else "",
        "is_error": status.is_error,
        "timestamp": now_ms(),
    }
    event.update(fields)
    return event


def case_event(
    request_id: str,
    index: int,
    verdict: str,
    message: str,
    **fields: Any,
) -> dict[str, Any]:
    """One judged case's verdict (a request with ``cases``): ``case`` is its index in the
    request's ``cases``; never ``done``, never ``stream``."""
    event: dict[str, Any] = {
        "id": request_id,
        "case": index,
        "phase": str(Phase.RUN),
        "verdict": verdict,
        "message": message,
        "is_error": verdict != "accepted",
        "timestamp": now_ms(),
    }
    event.update(fields)
    return event
