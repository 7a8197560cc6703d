"""Unit tests of the playground logic: txtar splitting, test detection and counting, request
fields of the new request types, diagnostics renaming."""

from __future__ import annotations

import json

import pytest

from sandboxd.golang import diagnostics, gotest
from sandboxd.limits import LimitPolicy
from sandboxd.wire import txtar
from sandboxd.wire.request import BadRequest, Control, SourceLimits, parse_line


def parse(obj: dict, **kw):
    return parse_line(json.dumps(obj).encode(), LimitPolicy(), SourceLimits(**kw),
                      toolchains=("default", "old"))


def test_txtar_split():
    text = "package main\n-- go.mod --\nmodule m\n-- a/b.go --\npackage b\n"
    assert txtar.split(text) == {"main.go": "package main\n", "go.mod": "module m\n",
                                 "a/b.go": "package b\n"}
    assert txtar.split("\n\n-- x.go --\npackage x") == {"x.go": "package x"}
    assert not txtar.is_archive("package main // -- x.go --\n")
    with pytest.raises(txtar.TxtarError):
        txtar.split("-- a.go --\n-- a.go --\n")


def test_tests_run_when_there_is_no_main():
    with_tests = b"package main\n\nimport \"testing\"\n\nfunc TestX(t *testing.T) {}\n"
    with_main = with_tests + b"\nfunc main() {}\n"
    assert gotest.wants_tests({"main.go": with_tests})
    assert not gotest.wants_tests({"main.go": with_main})
    assert gotest.wants_tests({"main.go": with_main}, forced=True)
    assert not gotest.wants_tests({"main.go": b"package main\n\nfunc Testify() {}\n"})
    assert not gotest.wants_tests({"main.go": b"package main\n", "p/p_test.go": with_tests})
    files, renamed = gotest.as_test_package({"main.go": with_tests, "go.mod": b"m"})
    assert set(files) == {"main_test.go", "go.mod"} and renamed == {"main_test.go": "main.go"}


def test_test_names_follow_go_tests_own_rule():
    """cmd/go/internal/load/test.go isTest: the prefix alone, or a first rune after it that is
    not lower case (so ``TestÑ…``, ``Test_x`` and ``Test`` are tests, ``Testify`` is not)."""
    def tests(name: str) -> bool:
        src = f"package main\n\nimport \"testing\"\n\nfunc {name}(t *testing.T) {{}}\n"
        return gotest.wants_tests({"main.go": src.encode()})

    for name in ("TestÑIsATest", "Test", "Test_x", "Test1", "TestX", "TestMain", "Fuzz",
                 "ExampleÉ", "Example"):
        assert tests(name), name
    for name in ("Testify", "Testñ", "Examples", "Fuzzy", "Benchmark", "BenchmarkX"):
        assert not tests(name), name


def test_benchmarks_alone_do_not_make_a_test_package_but_move_with_tests():
    """The Playground's rule: Test/Example/Fuzz functions (no main) run the tests; benchmarks
    alone leave it a program.  When tests run, a file of benchmarks is a test file too."""
    bench = b"package main\n\nimport \"testing\"\n\nfunc BenchmarkX(b *testing.B) {}\n"
    test = b"package main\n\nimport \"testing\"\n\nfunc TestY(t *testing.T) {}\n"
    assert not gotest.wants_tests({"main.go": bench})
    assert gotest.wants_tests({"main.go": bench}, forced=True)
    assert gotest.wants_tests({"main.go": test, "b.go": bench})
    files, _ = gotest.as_test_package({"main.go": test, "b.go": bench})
    assert set(files) == {"main_test.go", "b_test.go"}


def test_counter_counts_top_level_results_across_chunks():
    c = gotest.Counter()
    for chunk in (b"=== RUN   TestA\n--- PA", b"SS: TestA (0.00s)\n--- FAIL: TestB (0s)\n",
                  b"    --- FAIL: TestB/sub (0s)\n--- SKIP: TestC\n"):
        c.feed(chunk)
    assert (c.passed, c.failed, c.counts["SKIP"]) == (1, 1, 1)


def test_diagnostics_name_the_file_that_was_sent():
    text = "# sandbox [sandbox.test]\n./main_test.go:5:2: undefined: x\n"
    assert diagnostics.clean(text, {"main_test.go": "main.go"}) == "main.go:5:2: undefined: x\n"
    assert diagnostics.clean("<standard input>:3:1: expected 'IDENT'\n") == \
        "main.go:3:1: expected 'IDENT'\n"


def test_new_request_fields():
    r = parse({"id": "a", "code": "x", "stdin": "in", "go": "old", "test": True})
    assert (r.stdin, r.go, r.test, r.interactive) == (b"in", "old", True, False)
    assert parse({"type": "fmt", "code": "x"}).files == {"main.go": b"x"}
    assert parse({"type": "version"}).type == "version"
    assert parse({"type": "vet", "files": {"main.go": "x"}}).type == "vet"
    stdin = parse({"type": "stdin", "id": "a", "data": "hé", "eof": True})
    assert stdin == Control("stdin", "a", "hé".encode(), True)
    assert parse({"type": "cancel", "id": "a"}) == Control("cancel", "a")


@pytest.mark.parametrize("obj, words", [
    ({"code": "x", "go": "nope"}, "unknown Go toolchain"),
    ({"code": "x", "stdin": 5}, "'stdin' must be a string"),
    ({"code": "x", "stdin": "a", "interactive": True}, "not both"),
    ({"code": "x", "interactive": "yes"}, "true or false"),
    ({"code": "x", "stdin": "12345"}, "stdin is larger"),
    ({"type": "fmt"}, "'code'"),
    ({"type": "fmt", "files": {"a.go": 5}}, "must be a string"),
    ({"type": "fmt", "code": "x", "files": {"a.go": "x"}}, "not both"),
    ({"type": "fmt", "code": "x", "imports": "yes"}, "true or false"),
    ({"type": "fmt", "code": "x", "limits": {}}, "unknown field 'limits'"),
    ({"type": "fmt", "code": "-- ../x.go --\n"}, "is not allowed"),
    ({"type": "version", "code": "x"}, "unknown field 'code'"),
])
def test_bad_new_fields(obj, words):
    with pytest.raises(BadRequest) as e:
        parse(obj, max_stdin_bytes=4)
    assert words in e.value.message


@pytest.mark.parametrize("obj", [
    {"type": "stdin", "id": "a"},
    {"type": "stdin", "id": "a", "data": 1},
    {"type": "stdin", "id": "a", "eof": "yes"},
    {"type": "cancel", "id": "a", "data": "x"},
])
def test_bad_control_lines_do_not_carry_the_running_requests_id(obj):
    with pytest.raises(BadRequest) as e:
        parse(obj)
    assert e.value.request_id is None and e.value.fields["for_id"] == "a"
