"""The verdict (sandboxd.jobs.verdict): every rule that turns a child's end into a status, one
row each, with no daemon and no sandbox."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxd.jobs import verdict
from sandboxd.limits import PhaseLimits
from sandboxd.sandbox.child import ChildResult
from sandboxd.sandbox.driver import Report
from sandboxd.status import Phase, Status

LIM = PhaseLimits(wall_ms=5000, cpu_ms=2000, memory_mb=256, processes=64, file_size_mb=16,
                  disk_mb=64, open_files=128)
OUTPUT = 1000


def child(stopped_for: str | None = None, wall_ms: int = 10, oom_killed: bool = False,
          pids_refused: bool = False, out_of_memory: bool = False, **report: Any) -> ChildResult:
    return ChildResult(Report(**report), stopped_for, wall_ms, 5, 1024, oom_killed,
                       pids_refused, b"", out_of_memory)


# (name, child, phase, cgroup, expected status or None, words the message holds)
STOPPED = [
    ("sandbox failure", child(failed=True, message="bwrap failed"), Phase.RUN, True,
     Status.INTERNAL_ERROR, "internal error: sandbox failure (bwrap failed)"),
    ("sandbox failure beats a stop", child("wall", failed=True, message="x"), Phase.RUN, True,
     Status.INTERNAL_ERROR, "server's fault"),
    ("cancelled", child("cancelled"), Phase.RUN, True, Status.CANCELLED, "bye"),
    ("output", child("output"), Phase.RUN, True, Status.OUTPUT_LIMIT,
     "the program wrote more than 1000 bytes of output"),
    ("oom killed", child(oom_killed=True), Phase.RUN, True, Status.MEMORY_LIMIT,
     "the program used more than 256 MiB of memory"),
    ("memory stop", child("memory"), Phase.BUILD, True, Status.MEMORY_LIMIT,
     "the build used more than 256 MiB"),
    ("wall stop", child("wall"), Phase.RUN, True, Status.TIMEOUT,
     "ran longer than 5000 ms of wall time (timeout: wall)"),
    ("wall stop at the process limit", child("wall", pids_refused=True), Phase.RUN, True,
     Status.TIMEOUT, "; it reached its process limit of 64 (timeout: wall)"),
    ("cpu stop", child("cpu"), Phase.RUN, True, Status.TIMEOUT,
     "used more than 2000 ms of CPU time (timeout: cpu)"),
    ("driver timed out on cpu", child(timed_out="cpu"), Phase.RUN, True, Status.TIMEOUT,
     "(timeout: cpu)"),
    ("driver timed out on wall", child(timed_out="wall"), Phase.BUILD, True, Status.TIMEOUT,
     "the build ran longer than 5000 ms of wall time (timeout: wall)"),
    ("SIGXCPU", child(signal=verdict.SIGXCPU), Phase.RUN, True, Status.TIMEOUT,
     "(timeout: cpu)"),
    ("SIGKILL past the CPU limit, no cgroup", child(wall_ms=2000, signal=verdict.SIGKILL),
     Phase.RUN, False, Status.TIMEOUT, "(timeout: cpu)"),
    ("SIGKILL before the CPU limit, no cgroup", child(wall_ms=1999, signal=verdict.SIGKILL),
     Phase.RUN, False, None, ""),
    ("SIGKILL past the CPU limit with a cgroup", child(wall_ms=9000, signal=verdict.SIGKILL),
     Phase.RUN, True, None, ""),
    ("Go out of memory, no cgroup", child(exit_code=2, out_of_memory=True), Phase.RUN, False,
     Status.MEMORY_LIMIT, "more than 256 MiB of memory"),
    ("Go out of memory with a cgroup", child(exit_code=2, out_of_memory=True), Phase.RUN, True,
     None, ""),
    ("exit 2 without out of memory", child(exit_code=2), Phase.RUN, False, None, ""),
    ("an ordinary end", child(exit_code=0), Phase.RUN, True, None, ""),
]


@pytest.mark.parametrize(("name", "result", "phase", "cgroup", "status", "words"), STOPPED,
                         ids=[row[0] for row in STOPPED])
def test_stopped(name, result, phase, cgroup, status, words):
    got = verdict.stopped(result, phase, LIM, OUTPUT, cgroup, "bye")
    if status is None:
        assert got is None
    else:
        assert got is not None and got.status is status
        assert words in got.message


def test_cancel_without_a_reason():
    got = verdict.stopped(child("cancelled"), Phase.RUN, LIM, OUTPUT, True, None)
    assert got == verdict.Verdict(Status.CANCELLED, "cancelled")


BUILD = [
    ("success", child(exit_code=0), "", None),
    ("file too large", child(exit_code=1), "write x: file too large\n",
     "the build reached its file size limit of 16 MiB (file too large)"),
    ("no space", child(exit_code=1), "go: no space left on device\n",
     "the build reached its disk limit of 64 MiB (no space left on device)"),
    ("quota", child(exit_code=1), "Disk quota exceeded\n",
     "the build reached its disk limit of 64 MiB (disk quota exceeded)"),
    ("open files", child(exit_code=1), "open x: too many open files\n",
     "the build reached its open files limit of 128 (too many open files)"),
    ("words at a source position are the program's", child(exit_code=1),
     './main.go:3:1: "file too large"\n', None),
    ("indented words are the program's", child(exit_code=1), "\tfile too large\n", None),
    ("SIGXFSZ", child(signal=verdict.SIGXFSZ), "",
     "the build reached its file size limit of 16 MiB"),
    ("processes refused", child(exit_code=1, pids_refused=True), "",
     "the build reached its process limit of 64"),
    ("a compile error", child(exit_code=1), "./main.go:3:1: syntax error\n", None),
]


@pytest.mark.parametrize(("name", "result", "text", "message"), BUILD,
                         ids=[row[0] for row in BUILD])
def test_build_limit(name, result, text, message):
    got = verdict.build_limit(result, text, LIM)
    if message is None:
        assert got is None
    else:
        assert got == verdict.Verdict(Status.BUILD_LIMIT, message)


END = [
    ("normal", child(exit_code=0), None,
     verdict.Verdict(Status.OK, "the program exited normally")),
    ("exit status", child(exit_code=3), None,
     verdict.Verdict(Status.RUNTIME_ERROR, "the program exited with status 3")),
    ("exit status at the process limit", child(exit_code=1, pids_refused=True), None,
     verdict.Verdict(Status.RUNTIME_ERROR,
                     "the program exited with status 1 (it reached its process limit of 64)")),
    ("named signal", child(signal=11), None,
     verdict.Verdict(Status.RUNTIME_ERROR, "the program was killed by SIGSEGV",
                     {"signal": "SIGSEGV"})),
    ("SIGXFSZ notes the file size limit", child(signal=verdict.SIGXFSZ), None,
     verdict.Verdict(Status.RUNTIME_ERROR, "the program was killed by SIGXFSZ (it wrote past "
                     "its file size limit of 16 MiB)", {"signal": "SIGXFSZ"})),
    ("unknown signal", child(signal=99), None,
     verdict.Verdict(Status.RUNTIME_ERROR, "the program was killed by signal 99",
                     {"signal": "signal 99"})),
    ("tests passed", child(exit_code=0), (1, 0),
     verdict.Verdict(Status.OK, "1 test passed", {"tests_passed": 1, "tests_failed": 0})),
    ("tests failed", child(exit_code=1), (2, 3),
     verdict.Verdict(Status.RUNTIME_ERROR, "3 tests failed",
                     {"tests_passed": 2, "tests_failed": 3})),
    ("tests exit 1 with none failed: the exit decides, counts kept", child(exit_code=1), (2, 0),
     verdict.Verdict(Status.RUNTIME_ERROR, "the program exited with status 1", {},
                     {"tests_passed": 2, "tests_failed": 0})),
    ("tests killed", child(signal=9), (0, 0),
     verdict.Verdict(Status.RUNTIME_ERROR, "the program was killed by SIGKILL",
                     {"signal": "SIGKILL"}, {"tests_passed": 0, "tests_failed": 0})),
]


@pytest.mark.parametrize(("name", "result", "tests", "expected"), END,
                         ids=[row[0] for row in END])
def test_program_end(name, result, tests, expected):
    assert verdict.program_end(result, LIM, tests) == expected


def test_plural():
    assert verdict.plural(1, "test") == "1 test"
    assert verdict.plural(0, "issue") == "0 issues"


def test_test_counts_are_kept_whatever_ended_the_run():
    assert verdict.test_counts(None) == {}
    assert verdict.test_counts((2, 1)) == {"tests_passed": 2, "tests_failed": 1}
# A request on several toolchains: (name, their statuses, cancelled, the deciding one's index)
OK, CE, RE, CA = Status.OK, Status.COMPILE_ERROR, Status.RUNTIME_ERROR, Status.CANCELLED
SEVERAL = [
    ("all ok: the last", [OK, OK, OK], False, 2),
    ("one: itself", [RE], False, 0),
    ("the first that is not ok", [OK, CE, RE], False, 1),
    ("the first even when a later one is worse", [RE, Status.INTERNAL_ERROR], False, 0),
    ("cancelled: the cancelled one, before an earlier failure", [CE, CA, CA], True, 1),
    ("a cancel after the last ended: as if none came", [OK, RE], True, 1),
]


@pytest.mark.parametrize(("name", "statuses", "cancelled", "index"), SEVERAL,
                         ids=[row[0] for row in SEVERAL])
def test_deciding_toolchain(name, statuses, cancelled, index):
    assert verdict.deciding_toolchain(statuses, cancelled) == index
