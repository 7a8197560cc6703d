"""Judging on a real daemon: a run with ``cases`` builds once and runs the program once per case,
each in a clean run, each with its own verdict; bad cases are a ``bad_request``."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness import Daemon, finals, go_main
from tests.system.test_client import client

# One program for every case: each stdin line is a command.
JUDGED = go_main(
    '\tin := bufio.NewScanner(os.Stdin)\n'
    '\tfor in.Scan() {\n'
    '\t\tf := strings.Fields(in.Text())\n'
    '\t\tswitch f[0] {\n'
    '\t\tcase "sum":\n'
    '\t\t\ta, _ := strconv.Atoi(f[1])\n'
    '\t\t\tb, _ := strconv.Atoi(f[2])\n'
    '\t\t\tfmt.Println(a + b)\n'
    '\t\tcase "loop":\n'
    '\t\t\tfor {\n\t\t\t}\n'
    '\t\tcase "write":\n'
    '\t\t\tos.WriteFile("/box/left", []byte("x"), 0o600)\n'
    '\t\t\tos.WriteFile("left-too", []byte("x"), 0o600)\n'
    '\t\t\tos.WriteFile("/tmp/left", []byte("x"), 0o600)\n'
    '\t\t\tfmt.Println("wrote")\n'
    '\t\tcase "look":\n'
    '\t\t\tentries, _ := os.ReadDir("/box")\n'
    '\t\t\t_, err := os.Stat("/tmp/left")\n'
    '\t\t\tfmt.Println(len(entries), err == nil)\n'
    '\t\tcase "panic":\n'
    '\t\t\tpanic("boom")\n'
    '\t\t}\n'
    '\t}',
    imports=("bufio", "fmt", "os", "strconv", "strings"))


def judge(daemon: Daemon, cases: list[dict], request_id: str = "j", **fields) -> tuple[
        dict, list[dict]]:
    """The final event and the case events of one judging request."""
    events = daemon.run({"id": request_id, "code": JUDGED, "cases": cases, **fields})
    mine = [e for e in events if e.get("id") == request_id]
    return finals(events)[request_id], [e for e in mine if "case" in e]


def test_every_case_accepted(daemon):
    final, cases = judge(daemon, [
        {"stdin": "sum 1 2\n", "expected": "3\n", "name": "small"},
        {"stdin": "sum 20 22\nsum 1 1\n", "expected": "42\n2"},  # no final newline: same
        {"stdin": "sum 2 2\n", "expected": "4   \n\n\n"},  # trailing blanks: same
    ])
    assert (final["status"], final["message"]) == ("ok", "3 of 3 cases accepted"), final
    assert (final["cases_accepted"], final["cases_total"]) == (3, 3)
    assert final["verdicts"] == ["accepted"] * 3
    assert [(c["case"], c["verdict"], c["exit_code"]) for c in cases] == [
        (0, "accepted", 0), (1, "accepted", 0), (2, "accepted", 0)]
    assert cases[0]["name"] == "small" and "name" not in cases[1]
    assert all(isinstance(c["wall_ms"], int) for c in cases)


def test_a_wrong_answer_names_the_first_differing_line(daemon):
    final, cases = judge(daemon, [
        {"stdin": "sum 1 1\nsum 2 2\nsum 3 3\n", "expected": "2\n4\n7\n"},
        {"stdin": "sum 1 1\n", "expected": "2\n3\n"},
        {"stdin": "sum 1 2\n", "expected": "3\n"},
    ])
    assert (final["status"], final["message"]) == ("ok", "1 of 3 cases accepted"), final
    assert final["verdicts"] == ["wrong_answer", "wrong_answer", "accepted"]
    wrong = cases[0]
    assert (wrong["verdict"], wrong["line"], wrong["expected"], wrong["got"]) == (
        "wrong_answer", 3, "7", "6")
    assert wrong["message"] == "line 3 differs from the expected output" and wrong["is_error"]
    short = cases[1]
    assert (short["line"], short["expected"], short["got"]) == (2, "3", None)
    assert not any("stream" in e for e in cases)


def test_a_case_that_times_out_is_that_case_alone(daemon):
    final, cases = judge(daemon, [
        {"stdin": "sum 1 2\n", "expected": "3\n"},
        {"stdin": "loop\n", "expected": "never\n"},
        {"stdin": "panic\n", "expected": ""},
        {"stdin": "sum 2 3\n", "expected": "5\n"},
    ], limits={"run": {"wall_ms": 1500}})
    assert final["status"] == "ok", final
    assert final["verdicts"] == ["accepted", "timeout", "runtime_error", "accepted"]
    assert final["message"] == "2 of 4 cases accepted"
    timed = cases[1]
    assert timed["verdict"] == "timeout" and "(timeout: wall)" in timed["message"]
    assert timed["wall_ms"] >= 1500
    crashed = cases[2]
    assert (crashed["verdict"], crashed["exit_code"]) == ("runtime_error", 2)
    assert "panic: boom" in crashed["stderr"]


def test_a_case_never_sees_what_the_previous_case_wrote(daemon):
    final, cases = judge(daemon, [
        {"stdin": "look\n", "expected": "0 false\n"},
        {"stdin": "write\n", "expected": "wrote\n"},
        {"stdin": "look\n", "expected": "0 false\n"},
        {"stdin": "write\nlook\n", "expected": "wrote\n2 true\n"},  # its own files, it sees
        {"stdin": "look\n", "expected": "0 false\n"},
    ])
    assert final["verdicts"] == ["accepted"] * 5, cases


def test_bad_cases_are_refused_and_the_connection_goes_on(daemon):
    good = {"stdin": "sum 1 2\n", "expected": "3\n"}
    lines = [
        {"id": "none", "code": JUDGED, "cases": []},
        {"id": "many", "code": JUDGED, "cases": [good] * 65},
        {"id": "field", "code": JUDGED, "cases": [{"stdin": "", "expected": "", "out": ""}]},
        {"id": "missing", "code": JUDGED, "cases": [{"stdin": "sum 1 2\n"}]},
        {"id": "stdin", "code": JUDGED, "cases": [good], "stdin": "x"},
        {"id": "session", "code": JUDGED, "cases": [good], "session_id": "s1"},
        {"id": "big", "code": JUDGED, "cases": [{"stdin": "x" * (1 << 20), "expected": "y"}]},
        {"id": "after", "code": JUDGED, "cases": [good]},
    ]
    done = finals(daemon.run(*lines))
    words = {
        "none": "non-empty array", "many": "too many cases: 65 (at most 64)",
        "field": "unknown field 'out' in cases[0]",
        "missing": "cases[0].expected (a string) is required",
        "stdin": "give either 'cases' or 'stdin', not both",
        "session": "give either 'cases' or 'session_id', not both",
        "big": "larger than this server's maximum (1048576 bytes in all)",
    }
    for request_id, said in words.items():
        assert done[request_id]["status"] == "bad_request", done[request_id]
        assert said in done[request_id]["message"], done[request_id]["message"]
    assert (done["after"]["status"], done["after"]["verdicts"]) == ("ok", ["accepted"])


def test_a_compile_error_judges_nothing(daemon):
    events = daemon.run({"id": "c", "code": go_main("\tnope()"), "cases": [
        {"stdin": "", "expected": ""}]})
    assert finals(events)["c"]["status"] == "compile_error"
    assert not any("case" in e for e in events)


def test_the_client_judges_a_cases_file(daemon, tmp_path: Path):
    (tmp_path / "main.go").write_text(JUDGED)
    (tmp_path / "cases.json").write_text(json.dumps([
        {"stdin": "sum 1 2\n", "expected": "3\n", "name": "small"},
        {"stdin": "sum 1 1\n", "expected": "3\n"},
    ]))
    done = client(daemon, "judge", str(tmp_path / "main.go"), str(tmp_path / "cases.json"))
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("case 0 (small): accepted (") and lines[0].endswith(" ms)")
    assert lines[1].startswith("case 1: wrong_answer (")
    assert lines[1].endswith(': line 1: expected "3", got "2"')
    assert lines[2] == "1 of 2 cases accepted"
    assert done.returncode == 1, done.stderr
    (tmp_path / "cases.json").write_text(json.dumps([{"stdin": "sum 1 2\n", "expected": "3"}]))
    done = client(daemon, "judge", str(tmp_path / "main.go"), str(tmp_path / "cases.json"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines()[-1] == "1 of 1 case accepted"
