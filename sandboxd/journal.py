"""JSON log lines for journald or any log collector, through twistd's own ``--logger`` option:

    twistd -n --pidfile= --logger=sandboxd.journal.json_lines sandboxd ...

One JSON object per line on standard output (journald stores each as one entry): ``time``
(Unix seconds), ``level``, ``namespace``, ``message`` (the text the plain log shows), every
plain field of the event (a request's ``id``, ``session``, ``box``, ``status``, ``queue_ms``,
``build_ms``, ``run_ms``, ``bytes``, ...), and ``traceback`` for failures.  Twisted's own
``jsonFileLogObserver`` writes its internal event format instead (``log_format`` templates, an
RS byte before each record), which is meant for reading back with Twisted, not for people.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from zope.interface import provider

from sandboxd.wire.events import escape_json_text

_PLAIN = (str, int, float, bool, type(None))


def event_as_json(event: dict[str, Any]) -> str:
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": event.get("log_time"),
        "level": getattr(level, "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and isinstance(value, _PLAIN):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    # Escaped like the events (DEL, C1, U+2028/U+2029): a log viewer is a terminal too.
    return escape_json_text(json.dumps(record, ensure_ascii=False))


def json_lines(out: IO[str] | None = None) -> ILogObserver:
    """The observer factory twistd's ``--logger`` calls (with no arguments)."""
    # sys.__stdout__: twistd later replaces sys.stdout with a logging file.
    stream = out if out is not None else sys.__stdout__

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        try:
            line = event_as_json(event)
        except Exception as e:  # a log line must never take the daemon down
            line = json.dumps({"level": "error", "message": f"unloggable event: {e!r}"})
        stream.write(line + "\n")
        stream.flush()

    return observe
