"""Judging (``cases``) without a daemon: the comparison rule (``answer.first_difference``), a
case's verdict (``verdict.case_end``), the request's ``cases`` checks, and the job's judging
phase against fake children (tests/unit/fakechild.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from sandboxd.jobs import answer, verdict
from sandboxd.jobs.judge import SHOWN_STDERR_BYTES
from sandboxd.limits import LimitPolicy
from sandboxd.status import CaseStatus, Phase, Status
from sandboxd.wire.request import MAX_CASES, BadRequest, SourceLimits, parse_line
from tests.unit.fakechild import Expect, FakeChild
from tests.unit.test_job import make, run
from tests.unit.test_verdict import LIM, child

# -- the comparison rule ---------------------------------------------------------------------

# (name, expected, got, None when equal else (line, expected line, got line))
DIFFERENCES = [
    ("same", b"a\nb\n", b"a\nb\n", None),
    ("no final newline", b"a\nb\n", b"a\nb", None),
    ("an extra final newline", b"a\nb", b"a\nb\n\n\n", None),
    ("trailing spaces and tabs", b"1 2\n", b"1 2 \t\n", None),
    ("CRLF line ends", b"a\nb\n", b"a\r\nb\r\n", None),
    ("empty both", b"", b"", None),
    ("only blank lines against nothing", b"", b"\n \n\t\n", None),
    ("a different line", b"a\nb\nc\n", b"a\nB\nc\n", (2, "b", "B")),
    ("leading spaces count", b"x\n", b" x\n", (1, "x", " x")),
    ("an empty line between counts", b"a\nb\n", b"a\n\nb\n", (2, "b", "")),
    ("case counts", b"Yes\n", b"yes\n", (1, "Yes", "yes")),
    ("the output ended early", b"a\nb\n", b"a\n", (2, "b", None)),
    ("nothing at all", b"42\n", b"", (1, "42", None)),
    ("a line too many", b"a\n", b"a\nb\n", (2, None, "b")),
    ("not UTF-8", b"a\n", b"\xff\n", (1, "a", "\ufffd")),
]


@pytest.mark.parametrize(("expected", "got", "want"),
                         [row[1:] for row in DIFFERENCES], ids=[row[0] for row in DIFFERENCES])
def test_first_difference(expected: bytes, got: bytes, want: tuple | None) -> None:
    found = answer.first_difference(expected, got)
    if want is None:
        assert found is None
    else:
        assert found is not None and (found.line, found.expected, found.got) == want


def test_a_long_line_is_shown_cut():
    found = answer.first_difference(b"x" * 1000, b"y" * 1000)
    assert found is not None
    assert found.expected == "x" * answer.SHOWN_CHARS + "…"
    assert found.got == "y" * answer.SHOWN_CHARS + "…"


def test_cut_output_differs_even_where_the_kept_start_matches():
    kept = b"a\n" + b"\n" * 10 + b"partial"
    found = answer.first_difference(b"a\n", kept, cut=True)
    assert found is not None and found.cut and found.line == 2
    assert "longer than the expected output" in found.message()
    # A difference within what was kept is still that line's.
    found = answer.first_difference(b"a\nb\n", b"a\nc\n" + b"x" * 10, cut=True)
    assert found is not None and (found.line, found.expected, found.got) == (2, "b", "c")


# -- a case's verdict -------------------------------------------------------------------------


def test_case_end_accepted_and_wrong_answer():
    ok = verdict.case_end(child(exit_code=0), LIM, None, b"3\n", b"3\n", False)
    assert ok.verdict is CaseStatus.ACCEPTED and ok.fields == {}
    wrong = verdict.case_end(child(exit_code=0), LIM, None, b"3\n", b"4\n", False)
    assert wrong.verdict is CaseStatus.WRONG_ANSWER
    assert wrong.fields == {"line": 1, "expected": "3", "got": "4"}
    assert wrong.message == "line 1 differs from the expected output"


def test_case_end_a_limit_or_a_failure_beats_the_output():
    stop = verdict.stopped(child("wall"), Phase.RUN, LIM, 1000, True, None)
    timed = verdict.case_end(child("wall"), LIM, stop, b"3\n", b"3\n", False)
    assert timed.verdict is Status.TIMEOUT and "(timeout: wall)" in timed.message
    crashed = verdict.case_end(child(exit_code=2), LIM, None, b"3\n", b"3\n", False)
    assert crashed.verdict is Status.RUNTIME_ERROR
    assert crashed.message == "the program exited with status 2"
    killed = verdict.case_end(child(signal=11), LIM, None, b"", b"", False)
    assert (killed.verdict, killed.fields) == (Status.RUNTIME_ERROR, {"signal": "SIGSEGV"})


# -- the request's cases ----------------------------------------------------------------------


def parse(**fields: Any):
    line = {"id": "j", "code": "package main\nfunc main() {}\n", **fields}
    return parse_line(json.dumps(line).encode(), LimitPolicy(), SourceLimits(max_stdin_bytes=100))


def refused(**fields: Any) -> str:
    with pytest.raises(BadRequest) as e:
        parse(**fields)
    assert e.value.request_id == "j"
    return e.value.message


def test_cases_are_parsed_in_order():
    req = parse(cases=[{"stdin": "1 2\n", "expected": "3\n", "name": "small"},
                       {"stdin": "", "expected": ""}])
    assert req.cases is not None
    assert [(c.stdin, c.expected, c.name) for c in req.cases] == [
        (b"1 2\n", b"3\n", "small"), (b"", b"", None)]
    assert parse().cases is None


@pytest.mark.parametrize(("fields", "words"), [
    ({"cases": []}, "non-empty array"),
    ({"cases": {"stdin": "", "expected": ""}}, "non-empty array"),
    ({"cases": [{"stdin": "", "expected": ""}] * (MAX_CASES + 1)}, f"at most {MAX_CASES}"),
    ({"cases": ["x"]}, "cases[0] must be an object"),
    ({"cases": [{"stdin": ""}]}, "cases[0].expected (a string) is required"),
    ({"cases": [{"stdin": 1, "expected": ""}]}, "cases[0].stdin (a string) is required"),
    ({"cases": [{"stdin": "", "expected": "", "input": ""}]}, "unknown field 'input'"),
    ({"cases": [{"stdin": "", "expected": "", "name": ""}]}, "cases[0].name must be"),
    ({"cases": [{"stdin": "", "expected": "", "name": "a\nb"}]}, "printable"),
    ({"cases": [{"stdin": "x" * 60, "expected": "y" * 41}]}, "(100 bytes in all)"),
    ({"cases": [{"stdin": "x" * 50, "expected": ""}, {"stdin": "", "expected": "y" * 51}]},
     "larger than this server's maximum"),
    ({"cases": [{"stdin": "", "expected": ""}], "stdin": ""}, "either 'cases' or 'stdin'"),
    ({"cases": [{"stdin": "", "expected": ""}], "interactive": True},
     "either 'cases' or 'interactive'"),
    ({"cases": [{"stdin": "", "expected": ""}], "test": True}, "either 'cases' or 'test'"),
    ({"cases": [{"stdin": "", "expected": ""}], "session_id": "s"},
     "either 'cases' or 'session_id'"),
    ({"cases": [{"stdin": "", "expected": ""}], "test_json": True},
     "either 'cases' or 'test_json'"),
    ({"cases": [{"stdin": "", "expected": ""}], "bench": "."}, "either 'cases' or 'bench'"),
])
def test_bad_cases_are_refused(fields: dict[str, Any], words: str):
    assert words in refused(**fields)


def test_cases_only_on_run():
    with pytest.raises(BadRequest, match="unknown field 'cases'"):
        parse(type="vet", cases=[{"stdin": "", "expected": ""}])


# -- the judging phase, against fake children -------------------------------------------------


def judge(tmp_path, cases: list[dict[str, Any]], *children: Expect):
    job, events = make(tmp_path, cases=cases)
    wiped: list[int] = []
    job.rt.driver.wipe_box = lambda box, mb: wiped.append(box.number)
    FakeChild.expect(*children)
    run(job)
    return job, events, wiped


def test_each_case_runs_once_with_its_stdin_in_a_wiped_box(tmp_path):
    cases = [{"stdin": f"{i}\n", "expected": f"{i}\n"} for i in range(3)]
    _, events, wiped = judge(tmp_path, cases, *[
        Expect(Phase.RUN).output("stdout", f"{i}\n".encode()).ends(exit_code=0)
        for i in range(3)])
    assert [c.stdin for c in FakeChild.made] == [b"0\n", b"1\n", b"2\n"]
    assert all(c.run.with_workspace for c in FakeChild.made)
    assert wiped == [7, 7]  # before the second and the third case, not before the first
    assert not any("stream" in e for e in events)  # no output streamed
    cases_seen = [e for e in events if "case" in e]
    assert [(e["case"], e["verdict"]) for e in cases_seen] == [
        (0, "accepted"), (1, "accepted"), (2, "accepted")]
    end = events[-1]
    assert end["done"] and end["status"] == "ok" and end["message"] == "3 of 3 cases accepted"
    assert (end["cases_accepted"], end["cases_total"]) == (3, 3)
    assert end["verdicts"] == ["accepted"] * 3 and end["exit_code"] is None
    assert end["wall_ms"] == 9  # three runs of 3 ms


def test_each_case_has_its_own_verdict_and_the_request_is_ok(tmp_path):
    cases = [{"stdin": "", "expected": "a\n", "name": "first"},
             {"stdin": "", "expected": "a\nb\n"},
             {"stdin": "", "expected": ""},
             {"stdin": "", "expected": "x\n"}]
    _, events, _ = judge(
        tmp_path, cases,
        Expect(Phase.RUN).output("stdout", b"a\n").ends(exit_code=0),
        Expect(Phase.RUN).output("stdout", b"a\nc\n").ends(exit_code=0),
        Expect(Phase.RUN).ends(stopped_for="wall"),
        Expect(Phase.RUN).output("stdout", b"x\n").output("stderr", b"panic: boom\n")
        .ends(exit_code=2))
    seen = {e["case"]: e for e in events if "case" in e}
    assert seen[0]["verdict"] == "accepted" and seen[0]["name"] == "first"
    assert not seen[0]["is_error"]
    assert (seen[1]["verdict"], seen[1]["line"], seen[1]["expected"], seen[1]["got"]) == (
        "wrong_answer", 2, "b", "c")
    assert seen[2]["verdict"] == "timeout" and seen[2]["is_error"]
    assert (seen[3]["verdict"], seen[3]["exit_code"]) == ("runtime_error", 2)
    assert seen[3]["stderr"] == "panic: boom\n"
    end = events[-1]
    assert (end["status"], end["message"]) == ("ok", "1 of 4 cases accepted")
    assert end["verdicts"] == ["accepted", "wrong_answer", "timeout", "runtime_error"]


def test_a_case_output_past_output_bytes_is_output_limit_and_stderr_is_shown_cut(tmp_path):
    job, events = make(tmp_path, cases=[{"stdin": "", "expected": ""}],
                       limits={"output_bytes": 5000})
    FakeChild.expect(Expect(Phase.RUN).output("stderr", b"e" * 4000)
                     .output("stdout", b"x" * 4000).ends(exit_code=0))
    run(job)
    [case] = [e for e in events if "case" in e]
    assert case["verdict"] == "output_limit" and "5000 bytes" in case["message"]
    assert case["stderr"] == "e" * SHOWN_STDERR_BYTES


def test_a_sandbox_failure_in_a_case_ends_the_request(tmp_path):
    cases = [{"stdin": "", "expected": ""}] * 3
    _, events, _ = judge(tmp_path, cases, Expect(Phase.RUN).ends(exit_code=0),
                         Expect(Phase.RUN).ends(failed=True, message="bwrap failed"))
    end = events[-1]
    assert end["status"] == "internal_error" and end["verdicts"] == ["accepted"]
    assert [e["case"] for e in events if "case" in e] == [0]


def test_judging_never_runs_tests(tmp_path):
    code = "package main\nimport \"testing\"\nfunc TestX(t *testing.T) {}\n"
    job, _ = make(tmp_path, code=code, cases=[{"stdin": "", "expected": ""}])
    assert not job.testing


def test_each_case_has_a_cgroup_of_its_own(tmp_path):
    job, _ = make(tmp_path, cases=[{"stdin": "", "expected": ""}] * 3)
    names: list[str] = []
    job.rt.cgroups = SimpleNamespace(version=1, create=lambda name, limits: names.append(name))
    job.rt.driver.wipe_box = lambda box, mb: None
    FakeChild.expect(*[Expect(Phase.RUN).ends(exit_code=0)] * 3)
    run(job)
    first = names[0]
    assert first.startswith("run-") and names == [first, f"{first}-2", f"{first}-3"]


def test_a_slow_client_does_not_pause_a_judged_case(tmp_path):
    """Its output goes to the daemon, not to the client: a paused case would only run into
    its wall time because the client reads slowly."""
    job, _ = make(tmp_path, cases=[{"stdin": "", "expected": ""}] * 2)
    job.rt.driver.wipe_box = lambda box, mb: None
    job.pause()
    FakeChild.expect(Expect(Phase.RUN).pending(), Expect(Phase.RUN))
    got: list[Any] = []
    job.start().addBoth(got.append)
    first = FakeChild.made[0]
    job.pause()
    assert not first.paused
    first.finish()
    assert got == [None] and not FakeChild.made[1].paused
