"""A fake of a job's children, after buildbot-worker's ``FakeRunProcess`` and ``Expect``: a test
says which children the job will start, in order, what each writes and how each ends; the job
runs against them with no sandbox, no box and no root.

    FakeChild.expect(Expect(Phase.RUN).output("stdout", b"hi\\n").ends(exit_code=0))
    job.child_factory = FakeChild
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from sandboxd.sandbox.child import ChildResult
from sandboxd.sandbox.driver import Report, SandboxRun
from sandboxd.status import Phase


@dataclass
class Expect:
    """One child the job is expected to start: its phase (and argv, when given), then what it
    writes and how it ends."""

    phase: Phase
    argv: list[str] | None = None
    writes: list[tuple[str, bytes]] = field(default_factory=list)
    report: Report = field(default_factory=lambda: Report(exit_code=0))
    stopped_for: str | None = None
    pids_refused: bool = False
    wall_ms: int = 3
    waits: bool = False  # True: it ends only when the test calls ``finish()``

    def pending(self) -> Expect:
        self.waits = True
        return self

    def output(self, stream: str, data: bytes) -> Expect:
        self.writes.append((stream, data))
        return self

    def ends(self, stopped_for: str | None = None, pids_refused: bool = False,
             wall_ms: int = 3, **report: Any) -> Expect:
        self.report = Report(**report)
        self.stopped_for, self.pids_refused, self.wall_ms = stopped_for, pids_refused, wall_ms
        return self


class FakeChild:
    """Stands in for ``SandboxChild``: takes the next ``Expect`` and checks the job asked for
    it; ``start()`` writes its output through the job's sink and fires with its end."""

    expected: list[Expect] = []
    made: list[FakeChild] = []

    @classmethod
    def expect(cls, *expects: Expect) -> None:
        cls.expected = list(expects)
        cls.made = []

    @classmethod
    def assert_all_ran(cls) -> None:
        assert cls.expected == [], f"children expected but not started: {cls.expected}"

    def __init__(self, reactor: Any, driver: Any, run: SandboxRun, sink: Any,
                 stdin: bytes | None) -> None:
        assert self.expected, f"an unexpected child: {run.phase} {run.argv}"
        self.exp = self.expected.pop(0)
        assert run.phase == self.exp.phase, (run.phase, self.exp.phase)
        if self.exp.argv is not None:
            assert run.argv == self.exp.argv, (run.argv, self.exp.argv)
        self.run, self.sink, self.stdin = run, sink, stdin
        self.stdin_written: list[bytes] = []
        self.stdin_closed = False
        self.stopped_for: str | None = None
        self.paused = False
        self.transport = object()
        self.made.append(self)

    def start(self) -> defer.Deferred[ChildResult]:
        self.done: defer.Deferred[ChildResult] = defer.Deferred()
        if not self.exp.waits:
            self.finish()
        return self.done

    def finish(self) -> None:
        for stream, data in self.exp.writes:
            if self.stopped_for is not None:
                break
            if self.sink(stream, data, "1") < len(data):  # the sink is full: as SandboxChild
                self.stopped_for = "output"
        stopped = self.stopped_for or self.exp.stopped_for
        self.done.callback(ChildResult(self.exp.report, stopped, self.exp.wall_ms, 2, 1024,
                                       False, self.exp.pids_refused, b""))

    def write_stdin(self, data: bytes) -> None:
        self.stdin_written.append(data)

    def close_stdin(self) -> None:
        self.stdin_closed = True

    def stop(self, reason: str) -> None:
        if self.stopped_for is None:
            self.stopped_for = reason

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
