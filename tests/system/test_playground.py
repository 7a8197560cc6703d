"""What a Go playground's users expect, end to end: stdin, interactive stdin, cancel, fmt, vet,
tests, several files, versions.  Real Go in real boxes through a real daemon (both drivers)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import Daemon, finals, go_main, output

READ_ALL = go_main('\tb, _ := io.ReadAll(os.Stdin)\n\tfmt.Printf("%q\\n", b)',
                   imports=("fmt", "io", "os"))
ECHO = go_main(
    '\tin := bufio.NewScanner(os.Stdin)\n'
    '\tfor in.Scan() {\n\t\tfmt.Println("got", in.Text())\n\t}\n\tfmt.Println("eof")',
    imports=("bufio", "fmt", "os"),
)
TICKS = go_main('\tfor i := 0; ; i++ {\n\t\tfmt.Println("tick", i)\n'
                '\t\ttime.Sleep(50 * time.Millisecond)\n\t}', imports=("fmt", "time"))


def test_stdin_is_the_whole_input_and_absent_stdin_is_empty_not_a_hang(daemon):
    events = daemon.run(
        {"id": "given", "code": READ_ALL, "stdin": "hello\nwörld"},
        {"id": "none", "code": READ_ALL},
        {"id": "lines", "code": ECHO, "stdin": "a\nb\n"},
    )
    done = finals(events)
    assert all(done[i]["status"] == "ok" for i in ("given", "none", "lines")), done
    assert output(events, "given") == '"hello\\nwörld"\n'
    assert output(events, "none") == '""\n'
    assert done["none"]["wall_ms"] < 5000
    assert output(events, "lines") == "got a\ngot b\neof\n"


def test_interactive_stdin_is_buffered_during_the_build_then_live(daemon):
    with daemon.connect() as client:
        unique = ECHO.replace('"eof"', '"end of input"')  # never cached: a real build
        client.send({"id": "i", "code": unique, "interactive": True})
        client.send({"type": "stdin", "id": "i", "data": "early\n"})  # still building
        first = client.read_event()
        assert first["id"] == "i" and first["output"] == "got early\n"
        # The program is waiting for more: it answers each line while it runs.
        client.send({"type": "stdin", "id": "i", "data": "late\n"})
        second = client.read_event()
        assert second["output"] == "got late\n" and not second.get("done")
        client.send({"type": "stdin", "id": "i", "eof": True})
        rest = client.read_until_done("i")
    assert output(rest, "i") == "end of input\n"
    assert finals(rest)["i"]["status"] == "ok"


def test_interactive_without_eof_ends_at_half_close_not_at_the_wall_limit(daemon):
    with daemon.connect() as client:
        client.send({"id": "h", "code": ECHO, "interactive": True})
        client.send({"type": "stdin", "id": "h", "data": "x\n"})
        client.shutdown_write()
        events = client.read_all()
    assert output(events, "h") == "got x\neof\n"
    assert finals(events)["h"]["status"] == "ok"


def test_stdin_lines_that_cannot_be_delivered_are_refused_without_ending_the_request(daemon):
    with daemon.connect() as client:
        client.send({"id": "n", "code": TICKS})  # not interactive
        client.send({"type": "stdin", "id": "n", "data": "x"})
        client.send({"type": "stdin", "id": "ghost", "data": "x"})
        client.send({"type": "cancel", "id": "ghost"})
        refused = [client.read_event() for _ in range(2)]
        while len([e for e in refused if e.get("done")]) < 3:
            refused.append(client.read_event())
        client.send({"type": "cancel", "id": "n"})
        rest = client.read_until_done("n")
    bad = [e for e in refused if e.get("done")]
    assert [e["status"] for e in bad] == ["bad_request"] * 3
    assert all(e["id"] is None for e in bad)
    assert [e["for_id"] for e in bad] == ["n", "ghost", "ghost"]
    assert "not interactive" in bad[0]["message"]
    assert "no request with id 'ghost'" in bad[1]["message"]
    assert finals(rest)["n"]["status"] == "cancelled"


def test_too_much_stdin_is_refused(daemon):
    big = "x" * (1024 * 1024 + 1)
    events = daemon.run({"id": "big", "code": READ_ALL, "stdin": big})
    assert finals(events)["big"]["status"] == "bad_request"
    assert "stdin is larger" in finals(events)["big"]["message"]


def test_cancel_ends_a_running_program_at_once(daemon):
    with daemon.connect() as client:
        client.send({"id": "c", "code": TICKS})
        first = client.read_event()
        assert first["output"].startswith("tick 0")
        client.send({"type": "cancel", "id": "c"})
        sent = time.monotonic()
        events = client.read_until_done("c")
        took = time.monotonic() - sent
    final = finals(events)["c"]
    assert final["status"] == "cancelled" and final["phase"] == "run"
    assert took < 5  # loose: only that it did not run to the 10 s wall limit


def test_cancel_during_the_build(daemon):
    with daemon.connect() as client:
        client.send({"id": "cb", "code": TICKS.replace("tick", "tock")})
        client.send({"type": "cancel", "id": "cb"})
        events = client.read_until_done("cb")
    final = finals(events)["cb"]
    assert final["status"] == "cancelled" and final["phase"] in ("queue", "build")
    assert output(events, "cb", "stdout") == ""


def test_fmt_formats_or_reports_syntax_errors(daemon):
    events = daemon.run(
        {"type": "fmt", "id": "f", "code": "package main\nimport \"fmt\"\nfunc main(){\n"
                                            "fmt.Println( 1 )}\n"},
        {"type": "fmt", "id": "same", "code": "package main\n\nfunc main() {}\n"},
        {"type": "fmt", "id": "bad", "code": "package main\n\nfunc main( {\n"},
        {"type": "fmt", "id": "nocode"},
    )
    done = finals(events)
    assert done["f"]["status"] == "ok" and done["f"]["changed"] is True
    assert done["f"]["code"] == ('package main\n\nimport "fmt"\n\nfunc main() {\n'
                                 '\tfmt.Println(1)\n}\n')
    assert done["same"]["changed"] is False
    assert done["bad"]["status"] == "compile_error" and "code" not in done["bad"]
    assert output(events, "bad", "stderr").startswith("main.go:3:12: ")
    assert "standard input" not in output(events, "bad")
    assert done["nocode"]["status"] == "bad_request"


def test_vet_reports_findings_cleaned_and_says_so_in_the_status(daemon):
    events = daemon.run(
        {"type": "vet", "id": "issues", "code": go_main('\tfmt.Printf("%d\\n", "x")')},
        {"type": "vet", "id": "clean", "code": go_main('\tfmt.Println("x")')},
        {"type": "vet", "id": "broken", "code": go_main("\tfmt.Println(y)")},
        {"type": "vet", "id": "pkg", "files": {
            "main.go": 'package main\n\nimport "sandbox/p"\n\nfunc main() { p.F() }\n',
            "p/p.go": 'package p\n\nimport "fmt"\n\nfunc F() { fmt.Printf("%s\\n") }\n'}},
    )
    done = finals(events)
    assert done["issues"]["status"] == "vet_issues" and done["issues"]["vet_findings"] == 1
    assert done["issues"]["message"] == "go vet found 1 issue"  # not "1 issues"
    text = output(events, "issues", "stderr")
    assert text == 'main.go:8:14: fmt.Printf format %d has arg "x" of wrong type string\n'
    assert done["clean"]["status"] == "ok" and output(events, "clean") == ""
    assert done["broken"]["status"] == "compile_error"
    assert output(events, "broken") == "main.go:8:14: undefined: y\n"
    assert done["pkg"]["status"] == "vet_issues"
    assert output(events, "pkg").startswith("p/p.go:5:")


TESTS = ('package main\n\nimport (\n\t"fmt"\n\t"testing"\n)\n\n'
         'func TestPass(t *testing.T) {}\n\n'
         'func TestFail(t *testing.T) { t.Errorf("want %d", 2) }\n\n'
         'func ExampleHello() {\n\tfmt.Println("hello")\n\t// Output: hello\n}\n')


def test_a_program_with_tests_and_no_main_runs_them_verbosely(daemon):
    passing = TESTS.replace('t.Errorf("want %d", 2)', "")
    events = daemon.run({"id": "t", "code": TESTS}, {"id": "ok", "code": passing},
                        {"id": "forced", "test": True, "files": {
                            "main.go": go_main('\tfmt.Println("main")'),
                            "main_test.go": 'package main\n\nimport "testing"\n\n'
                                            'func TestX(t *testing.T) {}\n'}})
    done = finals(events)
    assert done["t"]["status"] == "runtime_error" and done["t"]["exit_code"] == 1
    assert (done["t"]["tests_passed"], done["t"]["tests_failed"]) == (2, 1)
    assert done["t"]["message"] == "1 test failed"  # not "1 tests failed"
    text = output(events, "t")
    assert "=== RUN   TestPass" in text and "--- FAIL: TestFail" in text
    assert "want 2" in text and "--- PASS: ExampleHello" in text
    assert done["ok"]["status"] == "ok" and done["ok"]["tests_failed"] == 0
    assert done["forced"]["status"] == "ok" and done["forced"]["tests_passed"] == 1
    assert done["forced"]["message"] == "1 test passed"
    assert done["ok"]["message"] == "3 tests passed"
    assert "main\n" not in output(events, "forced")


def test_a_test_run_stopped_by_a_limit_reports_the_counts_so_far(daemon):
    code = ('package main\n\nimport (\n\t"testing"\n\t"time"\n)\n\n'
            'func TestA(t *testing.T) {}\n\nfunc TestB(t *testing.T) {}\n\n'
            'func TestC(t *testing.T) { t.Error("no") }\n\n'
            'func TestSlow(t *testing.T) { time.Sleep(time.Hour) }\n')
    events = daemon.run({"id": "s", "code": code, "limits": {"wall_ms": 3000}})
    done = finals(events)["s"]
    assert done["status"] == "timeout", done
    assert (done["tests_passed"], done["tests_failed"]) == (2, 1), done


def test_a_test_that_does_not_compile_names_the_file_that_was_sent(daemon):
    events = daemon.run({"id": "tc", "code": TESTS.replace("func TestPass", "func TestPass(")})
    assert finals(events)["tc"]["status"] == "compile_error"
    text = output(events, "tc")
    assert text.startswith("main.go:") and "main_test.go" not in text


GREET = 'package greet\n\nimport "fmt"\n\nfunc Hi(n string) { fmt.Println("hi", n) }\n'
USES_GREET = 'package main\n\nimport "example.com/hello/greet"\n\nfunc main() { greet.Hi("x") }\n'


def test_several_files_as_files_and_as_txtar(daemon):
    files = {"main.go": USES_GREET, "go.mod": "module example.com/hello\n\ngo 1.22\n",
             "greet/greet.go": GREET}
    txtar = (USES_GREET + "-- go.mod --\nmodule example.com/hello\n\ngo 1.22\n"
             "-- greet/greet.go --\n" + GREET)
    no_mod = {"main.go": USES_GREET.replace("example.com/hello", "sandbox"),
              "greet/greet.go": GREET}
    events = daemon.run({"id": "files", "files": files}, {"id": "txtar", "code": txtar},
                        {"id": "nomod", "files": no_mod})
    done = finals(events)
    for i in ("files", "txtar", "nomod"):
        assert done[i]["status"] == "ok", (i, output(events, i))
        assert output(events, i) == "hi x\n"


@pytest.mark.parametrize("name", ["../x.go", "/etc/x.go", "a//b.go", "./a.go", "a/../b.go",
                                  ".hidden.go", "a\\b.go", "x\n.go", "a/b/c/d/e.go", ""])
def test_odd_file_names_are_refused(daemon, name):
    requests = [{"id": "n", "files": {"main.go": go_main(""), name: "package main\n"}}]
    if name.strip() and "\n" not in name:  # else it is no txtar marker, just text
        requests.append({"id": "n", "code": go_main("") + f"-- {name} --\npackage main\n"})
    for request in requests:
        events = daemon.run(request)
        final = finals(events)["n"]
        assert final["status"] == "bad_request", (name, final)


def test_file_count_and_size_are_bounded(daemon):
    many = {f"f{i}.go": "package main\n" for i in range(21)}
    big = {"main.go": go_main("") + "//" + "x" * (512 * 1024)}
    twice = go_main("") + "-- a.go --\npackage main\n-- a.go --\npackage main\n"
    events = daemon.run({"id": "many", "files": many}, {"id": "big", "files": big},
                        {"id": "twice", "code": twice})
    done = finals(events)
    assert done["many"]["status"] == "bad_request" and "too many files" in done["many"]["message"]
    assert done["big"]["status"] == "bad_request" and "larger" in done["big"]["message"]
    assert done["twice"]["status"] == "bad_request" and "twice" in done["twice"]["message"]


def test_version_and_unknown_toolchain(daemon):
    events = daemon.run({"type": "version", "id": "v"},
                        {"id": "g", "code": go_main(""), "go": "go0.1"})
    done = finals(events)
    assert done["v"]["status"] == "ok" and done["v"]["sandboxd"]
    assert done["v"]["go"]["default"].startswith("go1.") and done["v"]["default_go"] == "default"
    assert done["g"]["status"] == "bad_request" and "go0.1" in done["g"]["message"]


def test_named_toolchains_are_listed_and_picked(driver):
    goroot = subprocess.run([str(Path(sys.executable).parent / "go"), "env", "GOROOT"],
                            capture_output=True, text=True, check=True).stdout.strip()
    d = Daemon(driver, f"--go=alt={goroot}").start()
    try:
        events = d.run({"type": "version", "id": "v"},
                       {"id": "alt", "code": go_main('\tfmt.Println(runtime.Version())',
                                                     imports=("fmt", "runtime")), "go": "alt"},
                       {"id": "fmt", "type": "fmt", "code": "package main\n", "go": "alt"})
    finally:
        d.cleanup()
    done = finals(events)
    assert set(done["v"]["go"]) == {"default", "alt"} and done["v"]["default_go"] == "default"
    assert done["alt"]["status"] == "ok" and done["alt"]["go"] == done["v"]["go"]["alt"]
    assert output(events, "alt") == done["v"]["go"]["alt"] + "\n"
    assert done["fmt"]["status"] == "ok"
