"""The judging phase (a run with ``cases``): the program, built once, runs once per case, each
run clean, and each case gets its own verdict (``verdict.case_end``) in a ``case`` event.  It
returns the request's verdict; it never ends the request.

Clean means: the first case runs in the request's box as any anonymous run does (a box that
holds no file of an earlier request), and before every later case the box's files (``/box``)
are wiped (the driver's ``wipe_box``, as the pool does between requests); ``/tmp``,
``/var/tmp`` and ``/dev/shm`` are fresh for every run anyway, and no process of a run outlives
it.  So nothing a case wrote is there for the next one.  A case's output is not streamed: its
stdout is kept (up to the expected output's length and ``answer.SLACK_BYTES`` more) to be
compared, the start of its stderr to be shown; both together count against ``output_bytes``
per case (past it: ``output_limit``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandboxd.jobs import answer, verdict
from sandboxd.jobs.output import Collector
from sandboxd.jobs.run import BINARY_DIR_INSIDE, _place_binary
from sandboxd.sandbox.child import ChildResult
from sandboxd.sandbox.driver import RUN_ENV, Mount, SandboxRun
from sandboxd.status import CaseStatus, Phase, Status
from sandboxd.wire.events import case_event
from sandboxd.wire.request import Case

# The start of a case's stderr shown in its event (a panic's first lines).
SHOWN_STDERR_BYTES = 1024


class CaseOutput:
    """A case's sink: every byte counted against ``limit`` (the child stops past it), stdout
    kept up to ``keep`` bytes, stderr up to ``SHOWN_STDERR_BYTES``."""

    def __init__(self, keep: int, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.kept = {"stdout": Collector(keep), "stderr": Collector(SHOWN_STDERR_BYTES)}

    def __call__(self, stream: str, data: bytes, timestamp: str) -> int:
        take = data[: max(0, self.limit - self.size)]
        self.size += len(take)
        self.kept[stream](stream, take, timestamp)
        return len(take)

    @property
    def stdout(self) -> bytes:
        return self.kept["stdout"].joined()

    @property
    def cut(self) -> bool:
        """More stdout came than was kept."""
        out = self.kept["stdout"]
        return out.size > out.cap

    def stderr_shown(self) -> dict[str, Any]:
        data = self.kept["stderr"].joined()
        return {"stderr": data.decode("utf-8", "replace")} if data else {}


class JudgePhase:
    """The judging phase of a ``Job`` (mixed into it)."""

    async def _judge(self, binary: Path) -> verdict.Ending:
        rt, box, req = self.rt, self.box, self.request
        assert box is not None and req.cases is not None
        limits = req.limits.run
        verdicts: list[str] = []
        results: list[ChildResult] = []

        def tally() -> dict[str, Any]:
            accepted = verdicts.count(CaseStatus.ACCEPTED)
            return {"cases_accepted": accepted, "cases_total": len(req.cases or ()),
                    "verdicts": list(verdicts)}

        prog = self._make_prog_dir()
        try:
            _place_binary(binary, prog)
            for index, case in enumerate(req.cases):
                if self.cancel_reason is not None:
                    self.extra_fields.update(tally())
                    return verdict.Verdict(Status.CANCELLED, self.cancel_reason), None
                if index:  # nothing the previous case wrote is left for this one
                    rt.driver.wipe_box(box, limits.disk_mb)
                else:
                    rt.driver.resize_box(box, limits.disk_mb)
                result, sink = await self._judge_case(case, prog)
                results.append(result)
                rt.metrics.run_seconds.observe(result.wall_ms / 1000)
                stop = self._stopped(result, Phase.RUN)
                if stop is not None and stop.status in verdict.REQUEST_ENDS:
                    self.extra_fields.update(tally())
                    return stop, result
                end = verdict.case_end(result, limits, stop, case.expected, sink.stdout,
                                       sink.cut)
                verdicts.append(str(end.verdict))
                self.emit(self._case_event(index, case, end, result, sink))
        finally:
            self._remove_prog_dir(prog)
        self.run_ms = sum(r.wall_ms for r in results)
        counts = tally()
        self.extra_fields.update(counts)
        cpu = [r.cpu_ms for r in results]
        memory = [r.memory_kb for r in results if r.memory_kb is not None]
        self.extra_fields.update(
            time_ms=None if None in cpu else sum(c for c in cpu if c is not None),
            wall_ms=self.run_ms, memory_kb=max(memory) if memory else None)
        message = (f"{counts['cases_accepted']} of "
                   f"{verdict.plural(counts['cases_total'], 'case')} accepted")
        return verdict.Verdict(Status.OK, message), None

    async def _judge_case(self, case: Case, prog: Path) -> tuple[ChildResult, CaseOutput]:
        limits = self.request.limits
        sink = CaseOutput(len(case.expected) + answer.SLACK_BYTES, limits.output_bytes)
        run = SandboxRun(phase=Phase.RUN, box=self.box, argv=self._run_argv(),
                         env=dict(RUN_ENV), cwd="/box", limits=limits.run,
                         mounts=[Mount(prog, BINARY_DIR_INSIDE)], with_workspace=True)
        return await self._child(run, sink, case.stdin), sink

    def _case_event(self, index: int, case: Case, end: verdict.CaseVerdict,
                    result: ChildResult, sink: CaseOutput) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if case.name is not None:
            fields["name"] = case.name
        fields.update(
            exit_code=result.report.exit_code if result.report.signal is None else None,
            signal=None, time_ms=result.cpu_ms, wall_ms=result.wall_ms,
            memory_kb=result.memory_kb)
        fields.update(end.fields)
        fields.update(sink.stderr_shown())
        return case_event(self.request.id, index, str(end.verdict), end.message, **fields)
