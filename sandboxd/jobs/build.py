"""The build phase: the program built in a box, taken from the binary cache, or shared with an
identical request's build in flight; it returns a ``BuildOutcome``, it never ends the request."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from sandboxd.boxes import hostfs
from sandboxd.boxes.hostfs import MIB
from sandboxd.golang import diagnostics, experiments, gotest
from sandboxd.golang.modules import MODCACHE_INSIDE, PROXY_INSIDE
from sandboxd.golang.toolchain import (
    BUILD_FLAGS,
    FAKETIME_FLAGS,
    SOURCE_INSIDE,
)
from sandboxd.jobs import verdict
from sandboxd.jobs.bincache import BinaryCache
from sandboxd.jobs.heldbuild import (
    HeldBuild,
    build_mounts,
    make_job_dir,
    remove_job_dir,
)
from sandboxd.jobs.output import Collector, collector
from sandboxd.sandbox import executable
from sandboxd.sandbox.child import ChildResult
from sandboxd.sandbox.driver import Mount, SandboxRun
from sandboxd.status import Phase, Status

log = Logger()

MAX_BINARY_BYTES = 256 * MIB


@dataclass
class BuildOutcome:
    """A finished build, shareable between identical requests."""

    binary: Path | None
    status: Status
    message: str
    diagnostics: str = ""
    result: ChildResult | None = None


class BuildPhase:
    """The build phase of a ``Job`` (mixed into it): returns a ``BuildOutcome``."""

    async def _build(self) -> BuildOutcome:
        """The program, built here or by an identical request's build in flight.

        A build is shared only between requests whose every build setting is the same (the
        in-flight key: files, toolchain, flags, build limits, output limit), and only when it
        built or failed to compile; a build ended by a limit, a cancel or a failure of the
        sandbox is its own request's answer, and the next request in line builds for itself.
        Waiting for another request's build can be cancelled like any wait.
        """
        req, rt, tc = self.request, self.rt, self.toolchain
        refused = self._read_experiments()
        if refused is not None:
            return refused
        files = dict(req.files)
        files["go.mod"] = tc.with_go_line(files["go.mod"]) if "go.mod" in files else tc.go_mod()
        flags: tuple[str, ...] = BUILD_FLAGS
        if self.testing:
            files, self.renamed = gotest.as_test_package(files)
            flags = (*BUILD_FLAGS, "test")
        if req.faketime:  # never served to a run without it, nor the other way round
            flags = (*flags, *FAKETIME_FLAGS)
        key = BinaryCache.key(files, tc.ident, flags, req.limits.build, self._build_env_extra())
        leading = False

        def lead() -> defer.Deferred[BuildOutcome]:
            nonlocal leading
            leading = True
            self._waiting = None  # building now, not waiting: a cancel stops the build itself
            return defer.ensureDeferred(self._lead_build(files, key))

        outcome = rt.builds_in_flight.run((key, req.limits.output_bytes), lead, _shareable)
        if not leading:
            self._waiting = outcome
        try:
            built = await outcome
        except defer.CancelledError:
            return BuildOutcome(None, Status.CANCELLED, self.cancel_reason or "cancelled")
        finally:
            self._waiting = None
        if leading:
            return built
        rt.count("cache_shared")
        if built.binary is not None:
            return BuildOutcome(built.binary, Status.OK, "")
        return built

    async def _lead_build(self, files: dict[str, bytes], key: str) -> BuildOutcome:
        rt = self.rt
        cached = rt.binaries.get(key)
        if cached is not None:
            self.cached = True
            rt.count("cache_hits")
            return BuildOutcome(cached, Status.OK, "")
        rt.count("cache_misses")
        return await self._compile(files, key)

    def _read_experiments(self) -> BuildOutcome | None:
        """``//GOEXPERIMENT=`` header lines (``sandboxd.golang.experiments``) into
        ``self.goexperiment``; an outcome only when they cannot be given to the go command."""
        try:
            self.goexperiment = experiments.of_files(self.request.files)
        except experiments.ExperimentError as e:
            return BuildOutcome(None, Status.COMPILE_ERROR, "the program did not compile",
                                diagnostics=f"{e}\n")
        return None

    def _build_env_extra(self) -> dict[str, str]:
        """What this request's builds add to the toolchain's environment (part of the
        binary cache's and the in-flight key)."""
        return {"GOEXPERIMENT": self.goexperiment} if self.goexperiment else {}

    def _make_job_dir(self) -> Path:
        """The build's own directory (src, out, mods), a tmpfs of the build's ``disk_mb``."""
        job_dir = self.rt.jobs_dir / str(self.number)
        make_job_dir(job_dir, self.request.limits.build.disk_mb)
        return job_dir

    def _claim_held_build(self) -> HeldBuild | None:
        """The box's build launched ahead, when this request builds just like it; otherwise
        it stays with the box for a later request."""
        held = self.rt.held_builds
        if held is None or self.box is None or not (
            self.request.type == "run" and not self.testing and not self.request.faketime
            and self.rt.modules is None
            and not self._build_env_extra()  # launched with the toolchain's environment
            and self.toolchain is held.toolchain and self.request.limits.build == held.limits
        ):
            return None
        return held.take(self.box)

    def _build_run(self, job_dir: Path, files: dict[str, bytes], argv: list[str],
                   download: bool = False) -> SandboxRun:
        """A build-phase run of the toolchain over ``files`` at /src, /out writable.

        With modules allowed, the module cache is mounted too (writable only for the
        ``download`` step) and the go command works on a copy of go.mod in /out.
        """
        box, tc, modules = self.box, self.toolchain, self.rt.modules
        assert box is not None
        src, out = job_dir / "src", job_dir / "out"
        if not src.exists():
            hostfs.make_private_dir(src, 0, 0, 0o755)
            hostfs.write_tree(src, files)
            hostfs.make_private_dir(out, box.uid, box.gid, 0o700)
        env = {**tc.build_env(), **self._build_env_extra()}
        mounts = build_mounts(tc, job_dir)
        if modules is not None:
            if not (out / "go.mod").exists():
                for name in ("go.mod", "go.sum"):  # before any box process ran in /out
                    if name in files:
                        hostfs.write_tree(out, {name: files[name]})
                        os.chown(out / name, box.uid, box.gid)
            if modules.cache is not None:
                mounts.append(Mount(modules.cache, MODCACHE_INSIDE))
            else:
                mods = job_dir / "mods"
                if not mods.exists():
                    hostfs.make_private_dir(mods, box.uid, box.gid, 0o700)
                mounts.append(Mount(mods, MODCACHE_INSIDE, writable=download))
                if download and modules.proxy_dir is not None:
                    mounts.append(Mount(modules.proxy_dir, PROXY_INSIDE))
            env.update(modules.download_env() if download else modules.build_env())
        return SandboxRun(
            phase=Phase.BUILD,
            box=box,
            argv=argv,
            env=env,
            cwd=SOURCE_INSIDE,
            limits=self.request.limits.build,
            mounts=mounts,
            with_workspace=False,
            network=download and modules is not None and modules.network,
        )

    async def _download(self, job_dir: Path, files: dict[str, bytes]) -> BuildOutcome | None:
        """The module download step (``--goproxy``); an outcome only when it failed."""
        if self.rt.modules is None or not self.rt.modules.downloads:
            return None
        run = self._build_run(job_dir, files, self.toolchain.download_argv(), download=True)
        collected = collector(self.request.limits.output_bytes)
        result = await self._child(run, collected)
        return self._build_failure(result, collected, "the modules could not be downloaded")

    def _build_failure(
        self, result: ChildResult, collected: Collector, failed: str
    ) -> BuildOutcome | None:
        """How a build-phase step failed (sandbox, limit, non-zero exit), or None."""
        text = collected.joined().decode("utf-8", "replace")
        if result.report.failed:
            return BuildOutcome(None, Status.INTERNAL_ERROR, verdict.sandbox_failed(result),
                                result=result)
        limit = (self._stopped(result, Phase.BUILD)
                 or verdict.build_limit(result, text, self.request.limits.build))
        if limit is not None:
            return BuildOutcome(None, limit.status, limit.message,
                                diagnostics=diagnostics.clean(text), result=result)
        if result.report.exit_code != 0:
            return BuildOutcome(None, Status.COMPILE_ERROR, failed,
                                diagnostics=diagnostics.clean(text, self.renamed), result=result)
        return None

    async def _compile(self, files: dict[str, bytes], key: str) -> BuildOutcome:
        rt = self.rt
        held = self._claim_held_build()
        job_dir = held.job_dir if held is not None else self._make_job_dir()
        try:
            collected = collector(self.request.limits.output_bytes)
            if held is not None:  # launched ahead with these very settings: let it go
                self.child = held.child
                if self.cancel_reason is not None:
                    held.child.stopped_for = "cancelled"
                building = held.start(files, collected, self.paused)
                building.addBoth(self._child_ended)
            else:
                fake = self.request.faketime
                argv = (self.toolchain.test_argv(fake) if self.testing
                        else self.toolchain.build_argv(fake))
                failed = await self._download(job_dir, files)
                if failed is not None:
                    return failed
                run = self._build_run(job_dir, files, argv)
                building = defer.ensureDeferred(self._child(run, collected))  # spawned by now
            out = job_dir / "out"
            self._hold_run()  # set up while the build runs, not before it starts
            result = await building
            rt.metrics.build_seconds.observe(result.wall_ms / 1000)
            failure = self._build_failure(result, collected, "the program did not compile")
            if failure is not None:
                return failure
            self.build_ms = result.wall_ms
            try:
                fd, size = hostfs.open_box_file(out, "main", MAX_BINARY_BYTES)
                try:
                    executable.check_fd(fd)
                    binary = rt.binaries.put_file(key, fd, size)
                finally:
                    os.close(fd)
            except executable.NotAProgram as e:
                if e.archive:  # a package that is not main: what ``go run`` says of it
                    said = f"package {_module_path(files)} is not a main package"
                    return BuildOutcome(None, Status.COMPILE_ERROR, said,
                                        diagnostics=said + "\n")
                return BuildOutcome(None, Status.INTERNAL_ERROR,
                                    f"the build left no usable program ({e})", result=result)
            except OSError as e:
                return BuildOutcome(None, Status.INTERNAL_ERROR,
                                    f"the build left no usable program ({e.strerror})",
                                    result=result)
            return BuildOutcome(binary, Status.OK, "", result=result)
        finally:
            # Unmounting and removing it is not on the request's path: the run starts first.
            rt.later(0, remove_job_dir, job_dir)


def _shareable(outcome: BuildOutcome) -> bool:
    """What another request of the same build settings may take as its own build's outcome: a
    program, or a compile error.  Never a limit, a cancel, or a failure of the sandbox: those
    depend on the moment and the request, and the next one in line builds for itself."""
    return outcome.binary is not None or outcome.status is Status.COMPILE_ERROR


def _module_path(files: dict[str, bytes]) -> str:
    """The main module's path, as the go command names the package in the top directory."""
    m = _MODULE_LINE.search(files.get("go.mod", b""))
    return m.group(1).decode("utf-8", "replace") if m else "command-line-arguments"


_MODULE_LINE = re.compile(rb"^\s*module\s+\"?([^\s\"/]+[^\s\"]*)", re.MULTILINE)
