"""The per-test converter (a port of test2json), benchmark result lines and the test options:
pure functions, fed what Go 1.27's test binaries print."""

from __future__ import annotations

import pytest

from sandboxd.golang import bench, testjson
from sandboxd.wire import testopts
from sandboxd.wire.testopts import OptionError, split_elements

V = "\x16"
# What `prog.test -test.v=test2json` printed for a test with subtests, a t.Error (^O…^N), a
# t.Log holding the marker (escaped: ^[^V), a parallel test, and a fake line printed by fmt.
STREAM = (f"{V}=== RUN   TestA\n--- PASS: TestFake (0.00s)\n{V}=== RUN   TestA/sub1\n"
          f"    x_test.go:8: hello\x1b{V}x\n{V}--- PASS: TestA/sub1 (0.01s)\n{V}=== NAME  TestA\n"
          f"{V}=== RUN   TestA/sub2\n\x0f    x_test.go:9: bad\x0e\n"
          f"{V}--- FAIL: TestA/sub2 (0.00s)\n"
          f"{V}=== NAME  TestA\n{V}=== RUN   TestA/sk\n    x_test.go:10: why\n"
          f"{V}--- SKIP: TestA/sk (0.00s)\n{V}=== NAME  TestA\n{V}--- FAIL: TestA (0.02s)\n"
          f"{V}=== NAME  \n{V}=== RUN   TestB\n{V}=== PAUSE TestB\n{V}=== CONT  TestB\n"
          f"{V}--- PASS: TestB (0.00s)\n{V}FAIL\n").encode()


def _convert(data: bytes, step: int) -> tuple[list[testjson.Event], testjson.Converter]:
    c = testjson.Converter()
    events = []
    for i in range(0, len(data), step):
        events += c.feed(data[i:i + step])
    return events + c.close(), c


@pytest.mark.parametrize("step", [1, 3, 64, len(STREAM)])
def test_the_converter_gives_test2jsons_events_however_the_stream_is_cut(step: int) -> None:
    events, c = _convert(STREAM, step)
    actions = [(e.action, e.test) for e in events if e.action != "output"]
    assert actions == [
        ("run", "TestA"), ("run", "TestA/sub1"), ("pass", "TestA/sub1"), ("run", "TestA/sub2"),
        ("fail", "TestA/sub2"), ("run", "TestA/sk"), ("skip", "TestA/sk"), ("fail", "TestA"),
        ("run", "TestB"), ("pause", "TestB"), ("cont", "TestB"), ("pass", "TestB")]
    assert [e.elapsed for e in events if e.action in ("pass", "fail")][:1] == [0.01]
    out = {}
    for e in events:
        if e.action == "output":
            out[e.test] = out.get(e.test, b"") + e.output
    assert out["TestA"].startswith(b"=== RUN   TestA\n--- PASS: TestFake (0.00s)\n")
    assert out["TestA/sub1"] == (b"=== RUN   TestA/sub1\n    x_test.go:8: hello\x16x\n"
                                 b"--- PASS: TestA/sub1 (0.01s)\n")
    assert b"    x_test.go:9: bad\n" in out["TestA/sub2"]
    assert out[None] == b"FAIL\n"
    assert (c.passed, c.failed, c.skipped) == (2, 2, 1)


def test_a_framing_line_without_its_marker_is_output_even_before_any_test() -> None:
    events, c = _convert(b"--- PASS: TestInit (0.00s)\n=== RUN   TestX\n" + STREAM, 7)
    assert ("pass", "TestInit") not in [(e.action, e.test) for e in events]
    assert events[0] == testjson.Event("output", None, output=b"--- PASS: TestInit (0.00s)\n")
    assert c.passed == 2


def test_long_lines_are_cut_into_parts_and_never_frame() -> None:
    line = ("é" * 3000 + f"{V}--- PASS: TestZ (0.00s)").encode() + b"\n"
    events, c = _convert(b"x" * 70000 + b"\n" + line, 1000)
    outs = [e.output for e in events if e.action == "output"]
    assert all(len(o) <= testjson.OUT_BUFFER for o in outs) and len(outs) >= 3
    assert b"".join(outs).startswith(b"x" * 70000 + b"\n")
    assert b"".join(outs).decode().count("é") == 3000  # never cut inside a character
    assert c.passed == 1  # the marker began a new line


def test_unfinished_results_are_sent_at_the_end() -> None:
    events, c = _convert(f"{V}=== RUN   TestP\npanic: x\n{V}--- FAIL: TestP (0.00s)\n".encode(),
                         5)
    assert events[-1].action == "fail" and c.failed == 1


RESULT = "BenchmarkFib-2   \t     100\t      1234 ns/op\t      16 B/op\t       1 allocs/op"


def test_a_benchmark_line_is_parsed() -> None:
    assert bench.parse_line(RESULT) == {
        "name": "BenchmarkFib-2", "iterations": 100, "ns_per_op": 1234.0, "bytes_per_op": 16,
        "allocs_per_op": 1, "metrics": {}}
    extra = bench.parse_line("BenchmarkY-2 \t 100\t 254.8 ns/op\t 3.500 widgets/op\t 12.5 MB/s")
    assert extra is not None and extra["metrics"] == {"widgets/op": 3.5, "MB/s": 12.5}
    assert extra["bytes_per_op"] is None


@pytest.mark.parametrize("line", [
    "", "PASS", "goos: linux", "BenchmarkX-2", "Benchmarkx-2 100 1 ns/op", "BenchmarkX 0 1 ns/op",
    "BenchmarkX ten 1 ns/op", "BenchmarkX 10 1 ns/op 5", "BenchmarkX 10 nan ns/op",
    "BenchmarkX 10 5 B/op", "--- FAIL: BenchmarkX"])
def test_other_lines_are_not_results(line: str) -> None:
    assert bench.parse_line(line) is None


def test_results_come_from_the_stream_in_any_cuts() -> None:
    r = bench.Results()
    data = f"goos: linux\n{RESULT}\nBenchmarkB-2 \t 5\t 2 ns/op\nPASS\n".encode()
    for i in range(0, len(data), 4):
        r.feed(data[i:i + 4])
    r.close()
    assert [x["name"] for x in r.results] == ["BenchmarkFib-2", "BenchmarkB-2"]


def test_the_options_are_checked() -> None:
    assert testopts.test_options({"bench": ".", "benchtime": "100x"}).benchtime == "100x"
    assert testopts.test_options({"test_json": True}).test_json
    assert testopts.test_options({"bench": r"Fib/size=\d+$"}).bench == r"Fib/size=\d+$"
    assert split_elements("A/[/]/(x/y)/B") == ["A", "[/]", "(x/y)", "B"]
    for bad in ({"bench": "("}, {"bench": "a/("}, {"bench": "(?!x)"}, {"bench": r"(a)\1"},
                {"bench": "a++"}, {"bench": ""}, {"bench": "x" * 257}, {"bench": "\t"},
                {"bench": ".", "benchtime": "0x"}, {"bench": ".", "benchtime": "301s"},
                {"bench": ".", "benchtime": "1m"}, {"benchtime": "1x"},
                {"bench": ".", "test_json": True}, {"test_json": 1}):
        with pytest.raises(OptionError):
            testopts.test_options(bad)


def test_output_lines_that_come_together_are_one_event_framing_lines_their_own() -> None:
    c = testjson.Converter()
    events = c.feed(f"{V}=== RUN   TestL\na\nb\nc".encode())
    assert [(e.action, e.output) for e in events] == [
        ("run", None), ("output", b"=== RUN   TestL\n"), ("output", b"a\nb\n")]
    assert [e.output for e in c.feed(b"d\n") + c.close()] == [b"cd\n"]
