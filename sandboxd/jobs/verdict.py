"""The verdict: how a child's end becomes a request's status and message, in one place.

Pure functions of what the child reported (``ChildResult``), the phase's limits and two facts of
the request (whether a cgroup bounds its phases, why it was cancelled): no I/O, no state, so every
rule has a row in ``tests/unit/test_verdict.py``.  The order of the rules is the order below:

1. the sandbox itself failed: ``internal_error`` (the server's fault, never the program's);
2. a stop the daemon or the driver made: cancel, output, memory (OOM), wall, CPU;
3. a signal that means a limit: ``SIGXCPU`` (RLIMIT_CPU's soft limit), or ``SIGKILL`` at or past
   the CPU limit where no cgroup bounds the phase (RLIMIT_CPU's hard limit; isolate reports a
   box it killed as signal 9 too); without a cgroup, exit status 2 after Go's "out of memory";
4. for a build, a limit the toolchain met as a failing call (``build_limit``);
5. for a run, tests' counts, then the program's own end: a signal, an exit status, or normal;
6. for a judged case (``case_end``), after all of the above: its output against the expected
   one (``answer.first_difference``): ``accepted`` or ``wrong_answer``.

A request on several toolchains (``sandboxd.jobs.versions``) gets each toolchain's verdict by
these rules, and its own status from theirs by ``deciding_toolchain``.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from typing import Any

from sandboxd.jobs import answer
from sandboxd.limits import PhaseLimits
from sandboxd.sandbox.child import SIGNAL_NAMES, ChildResult
from sandboxd.status import CaseStatus, Phase, Status

SIGXCPU = int(signal.SIGXCPU)  # RLIMIT_CPU's soft limit was reached
SIGKILL = int(signal.SIGKILL)  # RLIMIT_CPU's hard limit, or isolate's own kill
SIGXFSZ = int(signal.SIGXFSZ)  # RLIMIT_FSIZE: a write past the file size limit
GO_EXIT_OUT_OF_MEMORY = 2  # Go's runtime exits 2 after "fatal error: out of memory"

_SOURCE_POSITION = re.compile(r"^\S+:\d+(:\d+)?: ")  # a compiler's line about the source


@dataclass(frozen=True)
class Verdict:
    """A request's end: its status, its message and the final event's extra fields."""

    status: Status
    message: str
    fields: dict[str, Any] = field(default_factory=dict)  # last in the final event
    # Tests' counts when the tests' own verdict did not decide: among the request's fields
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseVerdict:
    """One judged case's end: ``accepted``, ``wrong_answer`` or the status a limit or the
    program's own failure gave it; its message and its case event's extra fields."""

    verdict: CaseStatus | Status
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


# A stop in a case that ends the whole request (it is not the case's verdict): the sandbox
# failed, or the request was cancelled.
REQUEST_ENDS = (Status.INTERNAL_ERROR, Status.CANCELLED)

# What a phase ends with: its verdict and the child whose end it is (None: no child ran).
Ending = tuple[Verdict, ChildResult | None]


def sandbox_failed(result: ChildResult) -> str:
    """The final message when the sandbox itself failed: the server's fault, in fixed words
    (the sandbox tool's own, host paths and all, went to the log)."""
    return (f"internal error: sandbox failure ({result.report.message}); this is the "
            "server's fault, not the program's: the server's log has the details")


def stopped(result: ChildResult, phase: Phase, lim: PhaseLimits, output_bytes: int,
            cgroup: bool, cancel_reason: str | None) -> Verdict | None:
    """The verdict when the sandbox failed, or a limit (or a cancel) ended the phase; else
    None.  ``cgroup``: a cgroup bounds each phase (False: only rlimits and the box uid)."""
    if result.report.failed:
        return Verdict(Status.INTERNAL_ERROR, sandbox_failed(result))
    what = "the build" if phase is Phase.BUILD else "the program"
    stop = result.stopped_for
    cpu = Verdict(Status.TIMEOUT, f"{what} used more than {lim.cpu_ms} ms of CPU time "
                                  "(timeout: cpu)")
    memory = Verdict(Status.MEMORY_LIMIT, f"{what} used more than {lim.memory_mb} MiB of memory")
    if stop == "cancelled":
        return Verdict(Status.CANCELLED, cancel_reason or "cancelled")
    if stop == "output":
        return Verdict(Status.OUTPUT_LIMIT,
                       f"{what} wrote more than {output_bytes} bytes of output")
    if result.oom_killed or stop == "memory":
        return memory
    if stop == "wall":
        processes = (f"; it reached its process limit of {lim.processes}"
                     if result.pids_refused else "")
        return Verdict(Status.TIMEOUT, f"{what} ran longer than {lim.wall_ms} ms of wall time"
                                       f"{processes} (timeout: wall)")
    if stop == "cpu" or result.report.timed_out == "cpu":
        return cpu
    if result.report.timed_out == "wall":
        return Verdict(Status.TIMEOUT,
                       f"{what} ran longer than {lim.wall_ms} ms of wall time (timeout: wall)")
    sig = result.report.signal
    if sig == SIGXCPU or (sig == SIGKILL and not cgroup and result.wall_ms >= lim.cpu_ms):
        return cpu
    if (not cgroup and result.report.exit_code == GO_EXIT_OUT_OF_MEMORY
            and result.out_of_memory):
        return memory
    return None


def build_limit(result: ChildResult, text: str, lim: PhaseLimits) -> Verdict | None:
    """``build_limit`` when the build failed at one of its own limits that a tool meets as a
    failing call (file size, disk, processes, open files), not at the source: the toolchain's
    own words (a line not about a source position) or a counted refusal say which.  Such a
    failure is the request's settings', never the program's."""
    report = result.report
    if report.exit_code == 0 and report.signal is None:
        return None
    said = [line.lower() for line in text.splitlines()
            if line and not line[0].isspace() and not _SOURCE_POSITION.match(line)]
    for words, what in (
        ("file too large", f"its file size limit of {lim.file_size_mb} MiB"),
        ("no space left on device", f"its disk limit of {lim.disk_mb} MiB"),
        ("disk quota exceeded", f"its disk limit of {lim.disk_mb} MiB"),
        ("too many open files", f"its open files limit of {lim.open_files}"),
    ):
        if any(words in line for line in said):
            return Verdict(Status.BUILD_LIMIT, f"the build reached {what} ({words})")
    if report.signal == SIGXFSZ:
        return Verdict(Status.BUILD_LIMIT,
                       f"the build reached its file size limit of {lim.file_size_mb} MiB")
    if result.pids_refused:
        return Verdict(Status.BUILD_LIMIT,
                       f"the build reached its process limit of {lim.processes}")
    return None


def limit_note(result: ChildResult, lim: PhaseLimits) -> str:
    """Why a program may have failed on its own: a limit that refused it something."""
    if result.report.signal == SIGXFSZ:
        return f" (it wrote past its file size limit of {lim.file_size_mb} MiB)"
    if result.pids_refused:
        return f" (it reached its process limit of {lim.processes})"
    return ""


def program_end(result: ChildResult, lim: PhaseLimits,
                tests: tuple[int, int] | None = None) -> Verdict:
    """How a run that no limit stopped ended (``stopped`` first): tests' counts
    (``tests``: passed, failed) where ``go test`` ran, else the program's signal or exit."""
    report = result.report
    counts = test_counts(tests)
    if tests is not None:
        passed, failed = tests
        if report.signal is None and report.exit_code == 0:
            return Verdict(Status.OK, f"{plural(passed, 'test')} passed", counts)
        if report.signal is None and report.exit_code == 1 and failed:
            return Verdict(Status.RUNTIME_ERROR, f"{plural(failed, 'test')} failed", counts)
    note = limit_note(result, lim)
    if report.signal is not None:
        name = SIGNAL_NAMES.get(report.signal, f"signal {report.signal}")
        return Verdict(Status.RUNTIME_ERROR, f"the program was killed by {name}{note}",
                       {"signal": name}, counts)
    if report.exit_code:
        return Verdict(Status.RUNTIME_ERROR,
                       f"the program exited with status {report.exit_code}{note}", {}, counts)
    return Verdict(Status.OK, "the program exited normally", {}, counts)


def test_counts(tests: tuple[int, int] | None) -> dict[str, Any]:
    """The final event's counts of a run of tests (``tests``: passed, failed): also when a
    limit or a cancel ended it, then those seen so far."""
    if tests is None:
        return {}
    return {"tests_passed": tests[0], "tests_failed": tests[1]}


def deciding_toolchain(statuses: list[Status], cancelled: bool) -> int:
    """Which toolchain's end is the end of a request on several (``statuses`` in the request's
    order): the first ``cancelled`` one when the request was cancelled; else the first one that
    is not ``ok``; all ``ok``: the last one."""
    if cancelled and Status.CANCELLED in statuses:
        return statuses.index(Status.CANCELLED)
    return next((i for i, s in enumerate(statuses) if s is not Status.OK), len(statuses) - 1)


def plural(n: int, noun: str) -> str:
    """``1 test``, ``2 tests``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def case_end(result: ChildResult, lim: PhaseLimits, stop: Verdict | None, expected: bytes,
             got: bytes, cut: bool) -> CaseVerdict:
    """A judged case's verdict.  ``stop`` is ``stopped``'s (one of ``REQUEST_ENDS`` ends the
    request instead, and never comes here): a limit is the case's verdict; then the program's
    own failure (``runtime_error``, whatever it wrote); then its stdout ``got`` (``cut``: only
    its start was kept) against ``expected``."""
    if stop is not None:
        return CaseVerdict(stop.status, stop.message, stop.fields)
    end = program_end(result, lim)
    if end.status is not Status.OK:
        return CaseVerdict(end.status, end.message, end.fields)
    difference = answer.first_difference(expected, got, cut)
    if difference is None:
        return CaseVerdict(CaseStatus.ACCEPTED, "the output is the expected one")
    return CaseVerdict(CaseStatus.WRONG_ANSWER, difference.message(), difference.fields())
