"""Per-test events (``test_json``) and benchmarks (``bench``), issue 10: real test binaries in
real boxes through a real daemon."""

from __future__ import annotations

import json
import subprocess

from tests.harness import finals, output
from tests.system.test_client import client

TESTS = """package main

import (
\t"fmt"
\t"testing"
)

func init() { fmt.Println("--- PASS: TestInit (0.00s)") }

func TestTree(t *testing.T) {
\tfmt.Println("--- PASS: TestFake (0.00s)")
\tt.Run("good", func(t *testing.T) { t.Log("fine") })
\tt.Run("bad", func(t *testing.T) { t.Error("broken") })
\tt.Run("later", func(t *testing.T) { t.Skip("not today") })
}

func TestOther(t *testing.T) {}
"""

BENCH = """package main

import "testing"

var sink []byte

func BenchmarkAlloc(b *testing.B) {
\tfor i := 0; i < b.N; i++ {
\t\tsink = make([]byte, 64)
\t}
}

func BenchmarkMetric(b *testing.B) {
\tfor i := 0; i < b.N; i++ {
\t}
\tb.ReportMetric(3.5, "widgets/op")
}
"""


def _tests(events: list[dict], request_id: str) -> list[dict]:
    return [e for e in events if e.get("id") == request_id and "action" in e]


def test_test_json_streams_one_event_per_test_action_subtests_included(daemon) -> None:
    events = daemon.run({"id": "j", "code": TESTS, "test_json": True})
    final = finals(events)["j"]
    tests = _tests(events, "j")
    ends = {(e["test"], e["action"]) for e in tests if e["action"] in ("pass", "fail", "skip")}
    assert ends == {("TestTree/good", "pass"), ("TestTree/bad", "fail"),
                    ("TestTree/later", "skip"), ("TestTree", "fail"),
                    ("TestOther", "pass")}, tests
    runs = [e["test"] for e in tests if e["action"] == "run"]
    assert runs == ["TestTree", "TestTree/good", "TestTree/bad", "TestTree/later", "TestOther"]
    # every action ends with its elapsed time; output lines are the test's own
    assert all(isinstance(e.get("elapsed"), float) for e in tests
               if e["action"] in ("pass", "fail", "skip"))
    said = {e["test"]: "" for e in tests}
    for e in tests:
        if e["action"] == "output":
            said[e["test"]] += e["output"]
    assert "broken" in said["TestTree/bad"] and "\x0f" not in said["TestTree/bad"]
    assert "not today" in said["TestTree/later"]
    # the fake result line the program printed is output of TestTree, not a test
    assert "--- PASS: TestFake (0.00s)\n" in said["TestTree"]
    assert not any(e["test"] in ("TestFake", "TestInit") for e in tests)
    # a fake line before any test (test2json itself would take it: no marker seen yet)
    assert any(e["test"] is None and e.get("output") == "--- PASS: TestInit (0.00s)\n"
               for e in tests)
    # the program's stdout went out as these events only (stderr is stdout in this mode)
    assert not any(e.get("stream") == "stdout" for e in events)
    # counted: every test and subtest by its own result
    assert final["status"] == "runtime_error" and final["message"] == "2 tests failed"
    assert (final["tests_passed"], final["tests_failed"], final["tests_skipped"]) == (2, 2, 1)
    assert final["output_bytes"] > 0


def test_without_test_json_the_run_is_as_before(daemon) -> None:
    events = daemon.run({"id": "p", "code": TESTS})
    final = finals(events)["p"]
    assert not _tests(events, "p")
    assert "=== RUN   TestTree/good" in output(events, "p")
    assert "tests_skipped" not in final and final["tests_failed"] == 1


def test_bench_runs_benchmarks_and_parses_their_results(daemon) -> None:
    events = daemon.run({"id": "b", "code": BENCH, "bench": ".", "benchtime": "100x"})
    final = finals(events)["b"]
    assert final["status"] == "ok", (final, output(events, "b"))
    results = {r["name"].split("-")[0]: r for r in final["benchmarks"]}
    assert set(results) == {"BenchmarkAlloc", "BenchmarkMetric"}, final["benchmarks"]
    alloc = results["BenchmarkAlloc"]
    assert alloc["iterations"] == 100 and alloc["ns_per_op"] > 0
    assert alloc["bytes_per_op"] >= 64 and alloc["allocs_per_op"] >= 1  # (+ the runtime's own)
    assert results["BenchmarkMetric"]["metrics"] == {"widgets/op": 3.5}
    assert "BenchmarkAlloc" in output(events, "b", "stdout")  # streamed as it ran


def test_bench_selects_by_its_regexp(daemon) -> None:
    events = daemon.run({"id": "s", "code": BENCH, "bench": "Alloc$", "benchtime": "10x"})
    final = finals(events)["s"]
    assert [r["name"].split("-")[0] for r in final["benchmarks"]] == ["BenchmarkAlloc"]


def test_bad_bench_requests_are_bad_requests(daemon) -> None:
    base = {"code": BENCH}
    bad = {"re": {"bench": "("}, "perl": {"bench": "(?=x)"}, "long": {"bench": "x" * 257},
           "type": {"bench": 3}, "empty": {"bench": ""}, "ctl": {"bench": "a\nb"},
           "time": {"bench": ".", "benchtime": "1h"}, "alone": {"benchtime": "10x"},
           "both": {"bench": ".", "test_json": True}, "flag": {"test_json": "yes"}}
    events = daemon.run(*({"id": k, **base, **v} for k, v in bad.items()), {"id": "ok",
                        "code": BENCH, "bench": "Metric", "benchtime": "1x"})
    done = finals(events)
    for k in bad:
        assert done[k]["status"] == "bad_request", (k, done[k])
    assert "'bench'" in done["re"]["message"] and "'benchtime'" in done["time"]["message"]
    assert done["ok"]["status"] == "ok"  # the connection went on


def test_bench_respects_the_run_wall_limit(daemon) -> None:
    slow = ("package main\n\nimport (\n\t\"testing\"\n\t\"time\"\n)\n\n"
            "func BenchmarkSlow(b *testing.B) {\n\tfor i := 0; i < b.N; i++ {\n"
            "\t\ttime.Sleep(time.Millisecond)\n\t}\n}\n")
    events = daemon.run({"id": "w", "code": slow, "bench": ".", "benchtime": "100000x",
                         "limits": {"run": {"wall_ms": 800}}})
    final = finals(events)["w"]
    assert final["status"] == "timeout" and "800 ms of wall time" in final["message"], final
    assert final["phase"] == "run" and final["wall_ms"] < 5000
    assert final["benchmarks"] == []


def test_a_benchmark_only_package_runs_its_benchmarks_with_bench(daemon) -> None:
    """Without "bench" such a package is a compile_error (no main); with it, it runs."""
    only = "package main\n\nimport \"testing\"\n\nfunc BenchmarkX(b *testing.B) {}\n"
    events = daemon.run({"id": "n", "code": only}, {"id": "y", "code": only, "bench": ".",
                                                    "benchtime": "1x"})
    done = finals(events)
    assert done["n"]["status"] == "compile_error"
    assert done["y"]["status"] == "ok" and len(done["y"]["benchmarks"]) == 1


def test_the_client_prints_go_test_json_lines_and_runs_benchmarks(daemon, tmp_path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x_test.go").write_text(TESTS)
    done = client(daemon, "test", "-json", str(tmp_path / "t"), stdin=subprocess.DEVNULL)
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert done.returncode == 1, done
    assert any(x.get("Test") == "TestTree/bad" and x["Action"] == "fail"
               and x["Package"] == "sandbox" and "Elapsed" in x for x in lines)
    assert lines[-1]["Action"] == "fail" and "Test" not in lines[-1]
    assert any(x["Action"] == "output" and "broken" in x.get("Output", "") for x in lines)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "main.go").write_text(BENCH)
    done = client(daemon, "bench", "-benchtime", "10x", "Alloc", str(tmp_path / "b"),
                  stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done
    assert b"BenchmarkAlloc" in done.stdout and b"BenchmarkMetric" not in done.stdout
