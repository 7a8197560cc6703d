"""The job against a fake of its children (tests/unit/fakechild.py): which children it starts,
in what order, and how their ends become its events — no sandbox, no box, no root."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sandboxd.boxes import hostfs
from sandboxd.golang.toolchain import BINARY_INSIDE
from sandboxd.jobs.build import BuildOutcome
from sandboxd.jobs.job import Job, Runtime
from sandboxd.jobs.metrics import Metrics
from sandboxd.limits import LimitPolicy
from sandboxd.status import Phase, Status
from sandboxd.wire.request import parse_line
from tests.unit.fakechild import Expect, FakeChild
from tests.unit.test_job_end import FakePool

# A real ELF of this machine stands for the built program (the job checks it before a run).
PROGRAM = Path(os.path.realpath(shutil.which("true") or "/bin/true"))


class Toolchain(SimpleNamespace):
    name = "default"
    version = "go1.27.3"
    goroot = Path("/nonexistent/goroot")

    def build_env(self) -> dict[str, str]:
        return {}


class Built(Job):
    """A job whose build is done (the build phase has its own tests): its run is what runs."""

    child_factory = FakeChild
    prog_dir: Path

    async def _build(self) -> BuildOutcome:
        return BuildOutcome(PROGRAM, Status.OK, "")

    def _make_prog_dir(self) -> Path:
        self.prog_dir.mkdir()
        return self.prog_dir

    def _remove_prog_dir(self, prog: Path) -> None:
        shutil.rmtree(prog)


def make(tmp_path: Path, **fields: Any) -> tuple[Built, list[dict[str, Any]]]:
    rt = Runtime(reactor=None, driver=SimpleNamespace(own_cgroups=False,
                                                      resize_box=lambda box, mb: None),
                 pool=FakePool(), cgroups=SimpleNamespace(version=None),
                 toolchain=Toolchain(), binaries=None, jobs_dir=tmp_path, metrics=Metrics())
    line = {"id": "r", "code": "package main\nfunc main() {}\n", **fields}
    request = parse_line(json.dumps(line).encode(), LimitPolicy())
    events: list[dict[str, Any]] = []
    job = Built(rt, request, events.append)
    job.prog_dir = tmp_path / "prog"
    return job, events


def run(job: Job) -> dict[str, Any]:
    got: list[Any] = []
    job.start().addBoth(got.append)
    assert got == [None], got
    FakeChild.assert_all_ran()
    return job


def final(events: list[dict[str, Any]]) -> dict[str, Any]:
    [end] = [e for e in events if e.get("done")]
    assert events[-1] is end  # the final event is the last
    return end


def outputs(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["stream"], e["phase"], e["output"]) for e in events if "stream" in e]


def test_a_run_streams_its_output_and_ends_ok(tmp_path):
    job, events = make(tmp_path)
    FakeChild.expect(Expect(Phase.RUN, [BINARY_INSIDE]).output("stdout", b"hello\n")
                     .output("stderr", b"warn\n").ends(exit_code=0))
    run(job)
    assert outputs(events) == [("stdout", "run", "hello\n"), ("stderr", "run", "warn\n")]
    end = final(events)
    assert (end["status"], end["message"]) == (Status.OK, "the program exited normally")
    assert end["exit_code"] == 0 and end["output_bytes"] == 11
    assert job.rt.pool.released == [job.rt.pool.box] and job.box is None
    assert not (tmp_path / "prog").exists()  # the program's directory went


def test_the_program_placed_in_its_directory(tmp_path):
    job, _ = make(tmp_path)
    seen: list[bytes] = []

    class Looking(FakeChild):
        def start(self):
            seen.append((job.prog_dir / "main").read_bytes())
            return super().start()

    job.child_factory = Looking
    FakeChild.expect(Expect(Phase.RUN))
    run(job)
    assert seen == [PROGRAM.read_bytes()]


def test_a_signal_is_a_runtime_error_named(tmp_path):
    job, events = make(tmp_path)
    FakeChild.expect(Expect(Phase.RUN).ends(signal=11))
    run(job)
    end = final(events)
    assert end["status"] == Status.RUNTIME_ERROR and end["signal"] == "SIGSEGV"
    assert end["exit_code"] is None


def test_output_past_the_limit_stops_the_run(tmp_path):
    job, events = make(tmp_path, limits={"output_bytes": 4})
    FakeChild.expect(Expect(Phase.RUN).output("stdout", b"123456").ends(signal=9))
    run(job)
    assert outputs(events) == [("stdout", "run", "1234")]
    end = final(events)
    assert end["status"] == Status.OUTPUT_LIMIT and end["output_bytes"] == 4


def test_a_wall_stop_is_a_timeout(tmp_path):
    job, events = make(tmp_path)
    FakeChild.expect(Expect(Phase.RUN).ends(stopped_for="wall", signal=9))
    run(job)
    assert final(events)["status"] == Status.TIMEOUT


def test_a_sandbox_failure_is_an_internal_error(tmp_path):
    job, events = make(tmp_path)
    FakeChild.expect(Expect(Phase.RUN).ends(failed=True, message="bwrap: setting up failed"))
    run(job)
    end = final(events)
    assert end["status"] == Status.INTERNAL_ERROR and "server's fault" in end["message"]


def test_interactive_stdin_that_came_early_is_handed_over(tmp_path):
    job, _ = make(tmp_path, interactive=True)
    assert job.write_stdin(b"early\n", 100) is None
    job.close_stdin()
    assert job.write_stdin(b"late", 100) is not None  # after its end: refused, said why
    FakeChild.expect(Expect(Phase.RUN))
    run(job)
    [child] = FakeChild.made
    assert child.stdin is None and child.stdin_written == [b"early\n"] and child.stdin_closed


def test_stdin_over_the_limit_is_refused(tmp_path):
    job, _ = make(tmp_path, interactive=True)
    assert "would exceed" in job.write_stdin(b"x" * 11, 10)
    job2, _ = make(tmp_path)
    assert "not interactive" in job2.write_stdin(b"x", 10)


@pytest.mark.parametrize(("exit_code", "stdout", "stderr", "status", "message"), [
    (0, b"package main\n", b"", Status.OK, "formatted"),
    (2, b"", b"<standard input>:1:1: expected 'package'\n", Status.COMPILE_ERROR,
     "gofmt found syntax errors"),
])
def test_fmt_of_one_go_file_is_gofmt_alone(tmp_path, monkeypatch, exit_code, stdout, stderr,
                                           status, message):
    kept = keep_job_dirs(monkeypatch)
    job, events = make(tmp_path, type="fmt")
    FakeChild.expect(Expect(Phase.BUILD, ["/go/bin/gofmt"]).output("stdout", stdout)
                     .output("stderr", stderr).ends(exit_code=exit_code))
    run(job)
    [child] = FakeChild.made
    assert child.stdin == job.request.files["main.go"]  # the source goes in on stdin
    assert kept == [] and len(child.run.mounts) == 1  # no files: the toolchain alone
    end = final(events)
    assert (end["status"], end["message"]) == (status, message)
    if status is Status.OK:
        assert end["code"] == "package main\n" and end["changed"] is True
    else:
        assert outputs(events) == [("stderr", "build", "main.go:1:1: expected 'package'\n")]


def test_fmt_of_one_go_mod_goes_through_the_box_script(tmp_path, monkeypatch):
    kept = keep_job_dirs(monkeypatch)
    job, events = make(tmp_path, type="fmt", code=None, files={"go.mod": "module  m"})
    FakeChild.expect(Expect(Phase.BUILD).output("stdout", b"0 9\nmodule m\n"))
    run(job)
    [child] = FakeChild.made
    assert child.run.argv[:2] == ["/bin/sh", "-c"] and child.run.argv[-2:] == ["", "go.mod"]
    [job_dir] = kept  # the file is at /src, read-only
    assert (job_dir / "src" / "go.mod").read_bytes() == b"module  m"
    assert [(m.host, m.inside, m.writable) for m in child.run.mounts][1:] == [
        (job_dir / "src", "/src", False)]
    end = final(events)
    assert end["files"] == {"go.mod": "module m\n"} and end["changed"] is True


ARCHIVE = ("package main\nfunc main(){}\n-- go.mod --\nmodule  m\n-- notes.txt --\n  as  is"
           "\n-- sub/x.go --\npackage sub\n")


def test_fmt_of_an_archive_formats_go_and_go_mod_files_and_keeps_its_shape(tmp_path,
                                                                           monkeypatch):
    keep_job_dirs(monkeypatch)
    job, events = make(tmp_path, type="fmt", code=ARCHIVE)
    said = [b"package main\n\nfunc main() {}\n", b"module m\n", b"package sub\n"]
    frames = b"".join(b"%d %d\n%s" % (i, len(text), text) for i, text in enumerate(said))
    FakeChild.expect(Expect(Phase.BUILD).output("stdout", frames[:7])
                     .output("stdout", frames[7:]).ends(exit_code=0))
    run(job)
    [child] = FakeChild.made
    assert child.run.argv[-3:] == ["main.go", "go.mod", "sub/x.go"]  # not notes.txt
    end = final(events)
    assert end["status"] == Status.OK and end["changed"] is True
    assert end["code"] == ("package main\n\nfunc main() {}\n-- go.mod --\nmodule m\n"
                           "-- notes.txt --\n  as  is\n-- sub/x.go --\npackage sub\n")


def test_fmt_names_the_file_that_did_not_format(tmp_path, monkeypatch):
    keep_job_dirs(monkeypatch)
    job, events = make(tmp_path, type="fmt", code=ARCHIVE)
    FakeChild.expect(Expect(Phase.BUILD).output("stdout", b"0 13\npackage main\nfailed 1\n")
                     .output("stderr", b"go: errors parsing go.mod:\n"
                                       b"/tmp/fmt.mod/go.mod:1: unknown directive: 123\n")
                     .ends(exit_code=1))
    run(job)
    end = final(events)
    assert end["status"] == Status.COMPILE_ERROR and "code" not in end
    assert end["message"] == "go mod edit -fmt found syntax errors"
    assert outputs(events) == [("stderr", "build", "go.mod:1: unknown directive: 123\n")]


def test_fmt_with_imports_runs_goimports_or_says_this_server_cannot(tmp_path, monkeypatch):
    keep_job_dirs(monkeypatch)
    job, events = make(tmp_path, type="fmt", imports=True)
    FakeChild.expect()
    run(job)  # no box taken, no child
    end = final(events)
    assert (end["status"], end["phase"]) == (Status.BAD_REQUEST, Phase.QUEUE)
    assert "goimports is not installed" in end["message"]
    job, events = make(tmp_path, type="fmt", imports=True)
    job.rt.goimports = "/usr/bin/goimports"
    FakeChild.expect(Expect(Phase.BUILD).output("stdout", b"0 13\npackage main\n"))
    run(job)
    assert FakeChild.made[0].run.argv[-2:] == ["/usr/bin/goimports", "main.go"]
    assert final(events)["status"] == Status.OK


@pytest.mark.parametrize("stdout", [b"", b"0 99\nshort", b"1 3\nabc", b"0 3\nabcextra",
                                    b"zero\n", b"failed 1\n"])
def test_an_answer_of_the_box_that_cannot_be_read_is_an_internal_error(tmp_path, monkeypatch,
                                                                         stdout):
    keep_job_dirs(monkeypatch)
    job, events = make(tmp_path, type="fmt", code="package main\n-- go.mod --\nmodule m\n")
    FakeChild.expect(Expect(Phase.BUILD).output("stdout", stdout))
    run(job)
    assert final(events)["status"] == Status.INTERNAL_ERROR


def keep_job_dirs(monkeypatch) -> list[Path]:
    """The jobs' build directories, kept (plain directories, not removed) to be looked at."""
    kept: list[Path] = []

    def make_dir(self) -> Path:
        path = self.rt.jobs_dir / f"job-{self.number}"
        path.mkdir()
        kept.append(path)
        return path

    monkeypatch.setattr(Built, "_make_job_dir", make_dir)
    monkeypatch.setattr(hostfs, "remove_scratch_dir", lambda path: None)
    return kept


def test_a_cancel_while_fmt_runs(tmp_path):
    job, events = make(tmp_path, type="fmt")
    FakeChild.expect(Expect(Phase.BUILD).pending().ends(signal=9))
    got: list[Any] = []
    job.start().addBoth(got.append)
    [child] = FakeChild.made
    assert got == [] and not events
    job.cancel("the client changed its mind")
    assert child.stopped_for == "cancelled"  # the job stopped its child
    child.finish()
    assert got == [None]
    end = final(events)
    assert (end["status"], end["message"]) == (Status.CANCELLED, "the client changed its mind")


def test_pause_and_resume_reach_the_running_child(tmp_path):
    job, _ = make(tmp_path)
    FakeChild.expect(Expect(Phase.RUN).pending())
    job.start()
    [child] = FakeChild.made
    job.pause()
    assert child.paused
    job.resume()
    assert not child.paused
    child.finish()


TESTS = "package main\nimport \"testing\"\nfunc TestA(t *testing.T) {}\n"


def test_test_json_runs_test2json_mode_and_sends_test_events_before_the_final(tmp_path):
    job, events = make(tmp_path, code=TESTS, test_json=True)
    FakeChild.expect(Expect(Phase.RUN, [BINARY_INSIDE, "-test.v=test2json"])
                     .output("stdout", b"\x16=== RUN   TestA\n\x16--- PASS: TestA (0.00s)\n")
                     .output("stderr", b"panic text\n").ends(exit_code=0))
    run(job)
    actions = [(e["action"], e["test"]) for e in events if "action" in e]
    assert actions == [("run", "TestA"), ("output", "TestA"), ("output", "TestA"),
                       ("pass", "TestA")]
    assert outputs(events) == [("stderr", "run", "panic text\n")]
    end = final(events)
    assert (end["tests_passed"], end["tests_failed"], end["tests_skipped"]) == (1, 0, 0)
    assert end["output_bytes"] == 42 + 11  # the markers counted


def test_test_events_count_against_the_output_limit(tmp_path):
    job, events = make(tmp_path, code=TESTS, test_json=True, limits={"output_bytes": 20})
    FakeChild.expect(Expect(Phase.RUN).output("stdout", b"\x16=== RUN   TestA\nxxxxxxxxxxxx\n")
                     .ends(signal=9))
    run(job)
    said = "".join(e.get("output", "") for e in events if "action" in e)
    assert said == "=== RUN   TestA\nxxx"  # 20 bytes with the marker
    end = final(events)
    assert end["status"] == Status.OUTPUT_LIMIT and end["output_bytes"] == 20


def test_bench_runs_the_benchmark_flags_and_reports_the_results(tmp_path):
    job, events = make(tmp_path, bench="Fib", benchtime="10x")
    FakeChild.expect(Expect(Phase.RUN, [BINARY_INSIDE, "-test.run=^$", "-test.bench=Fib",
                                        "-test.benchmem", "-test.benchtime=10x"])
                     .output("stdout", b"BenchmarkFib-2 \t")
                     .output("stdout", b"     10\t  5.0 ns/op\t 0 B/op\t 0 allocs/op\nPASS\n")
                     .ends(exit_code=0))
    run(job)
    assert outputs(events)[0] == ("stdout", "run", "BenchmarkFib-2 \t")  # live
    end = final(events)
    assert end["status"] == Status.OK and "tests_passed" not in end
    assert end["benchmarks"] == [{"name": "BenchmarkFib-2", "iterations": 10, "ns_per_op": 5.0,
                                  "bytes_per_op": 0, "allocs_per_op": 0, "metrics": {}}]
