"""What a test run's output also becomes: per-test events (``test_json``) or benchmark results
(``bench``).  The job's stdout sink calls ``stdout``; the run ends with ``close`` and the
final event's fields (``fields``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sandboxd.golang import bench, testjson
from sandboxd.jobs.output import Output
from sandboxd.wire.events import test_event

Emit = Callable[[dict[str, Any]], None]


class TestEvents:
    """``test_json``: the test binary's stdout (``-test.v=test2json``) goes out as per-test
    events only, each output line as an ``output`` action; it counts against ``output_bytes``
    as the program's output does (its bytes, before the markers are taken out)."""

    def __init__(self, request_id: str, output: Output, emit: Emit) -> None:
        self.request_id = request_id
        self.output = output
        self.emit = emit
        self.converter = testjson.Converter()
        self.closed = False

    def stdout(self, data: bytes, timestamp: str) -> int:
        taken = self.output.take(data)
        self._send(self.converter.feed(taken), timestamp)
        return len(taken)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._send(self.converter.close(), None)

    def _send(self, events: list[testjson.Event], timestamp: str | None) -> None:
        for e in events:
            self.emit(test_event(self.request_id, e.action, e.test, e.elapsed, e.output,
                                 timestamp))

    def counts(self) -> tuple[int, int]:
        return self.converter.passed, self.converter.failed

    def fields(self) -> dict[str, Any]:
        return {"tests_skipped": self.converter.skipped}


class BenchResults:
    """``bench``: stdout streams as usual; its result lines are also parsed."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.results = bench.Results()

    def stdout(self, data: bytes, timestamp: str) -> int:
        taken = self.output.stream("stdout", data, timestamp)
        self.results.feed(data[:taken])
        return taken

    def close(self) -> None:
        self.results.close()

    def fields(self) -> dict[str, Any]:
        return {"benchmarks": self.results.results}
