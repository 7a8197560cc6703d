"""``fmt`` and ``vet``: gofmt and go vet in a box like a build; each returns its verdict."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from sandboxd.boxes import hostfs
from sandboxd.golang import diagnostics, formatter
from sandboxd.golang.toolchain import (
    GOROOT_INSIDE,
    SOURCE_INSIDE,
)
from sandboxd.jobs.output import Collector
from sandboxd.jobs.verdict import Ending, Verdict, plural
from sandboxd.sandbox.driver import Mount, SandboxRun
from sandboxd.status import Phase, Status
from sandboxd.wire import txtar

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
        """gofmt (goimports, go mod edit -fmt) parse untrusted text, so they run in the box
        like a build (``sandboxd.golang.formatter``): the files at /src, read-only."""
        req, tc, box = self.request, self.toolchain, self.box
        assert box is not None
        names = [name for name in req.files if formatter.formats(name)]
        formatted = dict(req.files)
        result = None
        if names:
            goimports = self.rt.goimports if req.imports else None
            alone = formatter.alone(names, goimports)  # gofmt of its stdin: no files
            job_dir = None if alone else self._make_job_dir()
            try:
                mounts = [Mount(tc.goroot, GOROOT_INSIDE)]
                if job_dir is not None:
                    src = job_dir / "src"
                    hostfs.make_private_dir(src, 0, 0, 0o755)
                    hostfs.write_tree(src, {name: req.files[name] for name in names})
                    mounts.append(Mount(src, SOURCE_INSIDE))
                run = SandboxRun(
                    phase=Phase.BUILD, box=box, argv=formatter.argv(names, goimports),
                    env=tc.build_env(), cwd="/tmp", limits=req.limits.build, mounts=mounts,
                    with_workspace=False,
                )
                collected = Collector(self.rt_source_cap(), stop_when_full=True)
                result = await self._child(run, collected, req.files[names[0]] if alone else b"")
            finally:
                if job_dir is not None:
                    hostfs.remove_scratch_dir(job_dir)
            stop = self._stopped(result, Phase.BUILD)
            if stop is not None:
                return stop, result
            try:
                answer = formatter.read_answer(collected.joined("stdout"), len(names),
                                               result.report.exit_code if alone else None)
            except formatter.FormatterError as e:
                log.error("request {id}: {e}", id=req.id, e=e)
                return Verdict(Status.INTERNAL_ERROR, f"internal error: {e}"), result
            if answer.failed is not None:
                name = names[answer.failed]
                said = collected.joined("stderr").decode("utf-8", "replace")
                self._send("stderr", formatter.error_text(said, name).encode())
                tool = "go mod edit -fmt" if not name.endswith(".go") else (
                    "goimports" if req.imports else "gofmt")
                return Verdict(Status.COMPILE_ERROR, f"{tool} found syntax errors"), result
            formatted.update(zip(names, answer.files, strict=True))
        changed = formatted != req.files
        if req.shape == "files":
            fields: dict[str, Any] = {"files": {name: data.decode("utf-8", "replace")
                                                for name, data in formatted.items()}}
        elif req.shape == "code":
            fields = {"code": formatted["main.go"].decode("utf-8", "replace")}
        else:  # given back as txtar formats an archive
            code = txtar.join(formatted, req.shape == "txtar-head")
            changed = code != req.archive
            fields = {"code": code.decode("utf-8", "replace")}
        return Verdict(Status.OK, "formatted", {**fields, "changed": changed}), result

    def rt_source_cap(self) -> int:
        """Formatted source is about as long as the source; allow generous growth."""
        size = sum(len(data) for data in self.request.files.values())
        return max(self.request.limits.output_bytes, 4 * size + 64 * len(self.request.files))

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
