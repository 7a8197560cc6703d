"""``fmt`` and ``vet``: gofmt and go vet in a box like a build; each returns its verdict."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from twisted.logger import Logger

from sandboxd.boxes import hostfs
from sandboxd.golang import diagnostics
from sandboxd.golang.toolchain import (
    GOROOT_INSIDE,
)
from sandboxd.jobs.output import Collector
from sandboxd.jobs.verdict import Ending, Verdict, plural
from sandboxd.sandbox.driver import Mount, SandboxRun
from sandboxd.status import Phase, Status

if TYPE_CHECKING:
    from sandboxd.jobs.job import Job

log = Logger()


class _LineCleaner:
    """Streams a tool's output line by line, cleaned, and counts the findings."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.partial = b""
        self.findings = 0
        self.type_errors = False

    def feed(self, stream: str, data: bytes, timestamp: str) -> int:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > 65536:
            lines.append(self.partial)
            self.partial = b""
        for line in lines:
            self._line(line.decode("utf-8", "replace"))
        return len(data) if not self.job.output.full else 0

    def flush(self) -> None:
        if self.partial:
            self._line(self.partial.decode("utf-8", "replace"))
            self.partial = b""

    def _line(self, line: str) -> None:
        if diagnostics.is_type_error(line):
            self.type_errors = True
        cleaned = diagnostics.clean(line)
        if not cleaned:
            return
        if _FINDING.match(cleaned):
            self.findings += 1
        self.job._send("stderr", cleaned.encode())


class ToolPhases:
    """The ``fmt`` and ``vet`` phases of a ``Job`` (mixed into it)."""

    async def _fmt(self) -> Ending:
        """gofmt parses untrusted text, so it runs in the box like a build."""
        tc, box = self.toolchain, self.box
        assert box is not None
        run = SandboxRun(
            phase=Phase.BUILD, box=box, argv=tc.gofmt_argv(), env=tc.build_env(), cwd="/tmp",
            limits=self.request.limits.build, mounts=[Mount(tc.goroot, GOROOT_INSIDE)],
            with_workspace=False,
        )
        collected = Collector(self.rt_source_cap(), stop_when_full=True)
        result = await self._child(run, collected, self.request.files["main.go"])
        stop = self._stopped(result, Phase.BUILD)
        if stop is not None:
            return stop, result
        if result.report.exit_code != 0:
            errors = diagnostics.clean(collected.joined("stderr").decode("utf-8", "replace"))
            self._send("stderr", errors.encode())
            return Verdict(Status.COMPILE_ERROR, "gofmt found syntax errors"), result
        code = collected.joined("stdout").decode("utf-8", "replace")
        return Verdict(Status.OK, "formatted", {
            "code": code, "changed": code.encode() != self.request.files["main.go"]}), result

    def rt_source_cap(self) -> int:
        """Formatted source is about as long as the source; allow generous growth."""
        return max(self.request.limits.output_bytes, 4 * len(self.request.files["main.go"]))

    async def _vet(self) -> Ending:
        """``go vet`` over the sources; findings stream as cleaned stderr lines."""
        files, tc = dict(self.request.files), self.toolchain
        refused = self._read_experiments()
        if refused is not None:
            self._send("stderr", refused.diagnostics.encode())
            return Verdict(refused.status, refused.message), None
        files["go.mod"] = tc.with_go_line(files["go.mod"]) if "go.mod" in files else tc.go_mod()
        job_dir = self._make_job_dir()
        lines = _LineCleaner(self)
        try:
            failed = await self._download(job_dir, files)
            if failed is not None:
                if failed.diagnostics:
                    self._send("stderr", failed.diagnostics.encode())
                return Verdict(failed.status, failed.message), failed.result
            run = self._build_run(job_dir, files, self.toolchain.vet_argv())
            result = await self._child(run, lines.feed)
        finally:
            hostfs.remove_scratch_dir(job_dir)
        lines.flush()
        stop = self._stopped(result, Phase.BUILD)
        if stop is not None:
            return stop, result
        if result.report.exit_code == 0:
            return Verdict(Status.OK, "go vet found nothing", {"vet_findings": 0}), result
        if lines.type_errors or not lines.findings:
            return Verdict(Status.COMPILE_ERROR, "the program did not compile"), result
        return Verdict(Status.VET_ISSUES, f"go vet found {plural(lines.findings, 'issue')}",
                       {"vet_findings": lines.findings}), result


_FINDING = re.compile(r"^[\w./+-]+\.go:\d+:\d+: ")
