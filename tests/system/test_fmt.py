"""``fmt`` as the Go Playground formats (issue 10 item 5, issue 13's ``/fmt`` ``imports``): a
txtar archive file by file (``.go`` with gofmt, ``go.mod`` with the go command's formatting,
other files as they are) and given back in its shape, goimports on request, errors naming the
file — real gofmt, goimports and go in real boxes through a real daemon."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.harness import Daemon, finals, output
from tests.httpface import exchange, http_daemon
from tests.system.test_client import client

# golang/playground's fmt_test.go (TestHandleFmt), every case but its OPTIONS one: what its
# /fmt answers, Body and Error, for a body and imports.
PLAYGROUND_FMT = [
    ("classic", " package main\n    func main( ) {  }\n", False,
     "package main\n\nfunc main() {}\n", ""),
    ("classic_goimports", " package main\nvar _ = fmt.Printf", True,
     "package main\n\nimport \"fmt\"\n\nvar _ = fmt.Printf\n", ""),
    ("single_go_with_header", "-- prog.go --\n  package main", False,
     "-- prog.go --\npackage main\n", ""),
    ("multi_go_with_header", "-- prog.go --\n  package main\n\n\n-- two.go --\n   package main\n"
     "  var X = 5", False, "-- prog.go --\npackage main\n-- two.go --\npackage main\n\n"
     "var X = 5\n", ""),
    ("multi_go_without_header", "    package main\n\n\n-- two.go --\n   package main\n"
     "  var X = 5", False, "package main\n-- two.go --\npackage main\n\nvar X = 5\n", ""),
    ("single_go.mod_with_header", "-- go.mod --\n   module   \"foo\"   ", False,
     "-- go.mod --\nmodule foo\n", ""),
    ("multi_go.mod_with_header", "-- a/go.mod --\n  module foo\n\n\n-- b/go.mod --\n"
     "   module  \"bar\"", False, "-- a/go.mod --\nmodule foo\n-- b/go.mod --\nmodule bar\n", ""),
    ("only_format_go_and_go.mod", "    package   main   \n\n\n-- go.mod --\n   module   foo   \n"
     "\n\n-- plain.txt --\n   plain   text   \n\n\n", False,
     "package main\n-- go.mod --\nmodule foo\n-- plain.txt --\n   plain   text   \n\n\n", ""),
    ("error_gofmt", "package 123\n", False, "", "prog.go:1:9: expected 'IDENT', found 123"),
    ("error_gofmt_with_header", "-- dir/one.go --\npackage 123\n", False, "",
     "dir/one.go:1:9: expected 'IDENT', found 123"),
    ("error_goimports", "package 123\n", True, "", "prog.go:1:9: expected 'IDENT', found 123"),
    ("error_goimports_with_header", "-- dir/one.go --\npackage 123\n", True, "",
     "dir/one.go:1:9: expected 'IDENT', found 123"),
    ("error_go.mod", "-- go.mod --\n123\n", False, "", "go.mod:1: unknown directive: 123"),
    ("error_go.mod_with_header", "-- dir/go.mod --\n123\n", False, "",
     "dir/go.mod:1: unknown directive: 123"),
]


@pytest.fixture(scope="module")
def web():
    daemon, port = http_daemon()
    try:
        yield port
    finally:
        daemon.cleanup()


@pytest.mark.parametrize(("body", "imports", "body_out", "error"),
                         [case[1:] for case in PLAYGROUND_FMT],
                         ids=[case[0] for case in PLAYGROUND_FMT])
def test_the_playgrounds_own_fmt_cases_over_its_api(web, body, imports, body_out, error):
    form = {"body": body, **({"imports": "true"} if imports else {})}
    status, head, answer = exchange(web, "POST", "/fmt", urllib.parse.urlencode(form).encode(),
                                    {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and head["content-type"] == "application/json"
    assert json.loads(answer) == {"Body": body_out, "Error": error}


def test_playground_fmt_errors_are_one_string_as_go_scanner_says_them(web):
    """format.Source's error is an ErrorList: the first error and how many more."""
    status, _, answer = exchange(web, "POST", "/fmt", urllib.parse.urlencode(
        {"body": "package main\nfunc main() { x := }\nfunc f() { y := }\n"}).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert json.loads(answer) == {"Body": "", "Error": "prog.go:2:20: expected operand, found "
                                                       "'}' (and 1 more errors)"}


ARCHIVE = ("package main\nimport \"sandbox/x-y+z\"\nfunc main(){ xyz.F() }\n"
           "-- go.mod --\nmodule   sandbox\ngo 1.22\nrequire (\n  a.b/c v1.0.0\n)\n"
           "-- notes.txt --\n  kept   as   is\n"
           "-- x-y+z/x.go --\npackage xyz\nfunc F(){println( 1 )}\n"
           "-- x-y+z/go.mod --\nmodule  other\n")


def test_an_archive_is_formatted_file_by_file_and_given_back_in_its_shape(daemon):
    formatted = ("package main\n\nimport \"sandbox/x-y+z\"\n\nfunc main() { xyz.F() }\n"
                 "-- go.mod --\nmodule sandbox\n\ngo 1.22\n\nrequire a.b/c v1.0.0\n"
                 "-- notes.txt --\n  kept   as   is\n"
                 "-- x-y+z/x.go --\npackage xyz\n\nfunc F() { println(1) }\n"
                 "-- x-y+z/go.mod --\nmodule other\n")
    events = daemon.run(
        {"type": "fmt", "id": "a", "code": ARCHIVE},
        {"type": "fmt", "id": "same", "code": formatted},
        {"type": "fmt", "id": "marked", "code": "-- main.go --\npackage  main\n"},
        {"type": "fmt", "id": "files", "files": {"go.mod": "module  m\n", "a.go": "package a",
                                                 "a.txt": "x"}},
    )
    done = finals(events)
    assert done["a"]["status"] == "ok", (done["a"], output(events, "a"))
    assert done["a"]["code"] == formatted and done["a"]["changed"] is True
    assert output(events, "a") == ""
    assert done["same"]["code"] == formatted and done["same"]["changed"] is False
    assert done["marked"]["code"] == "-- main.go --\npackage main\n"
    assert done["files"]["files"] == {"go.mod": "module m\n", "a.go": "package a\n",
                                      "a.txt": "x"}
    assert done["files"]["changed"] is True and "code" not in done["files"]


def test_the_first_file_that_does_not_format_is_named(daemon):
    events = daemon.run(
        {"type": "fmt", "id": "go", "code": "package main\n-- x-y+z/x.go --\npackage x\n"
                                            "func F( {\n-- go.mod --\n123\n"},
        {"type": "fmt", "id": "mod", "code": "package main\n-- go.mod --\nmodule m\n123\n"},
    )
    done = finals(events)
    assert done["go"]["status"] == "compile_error" and "code" not in done["go"]
    assert (done["go"]["message"], done["go"]["phase"]) == ("gofmt found syntax errors", "build")
    assert output(events, "go", "stderr") == "x-y+z/x.go:2:9: expected ')', found '{'\n"
    assert done["mod"]["message"] == "go mod edit -fmt found syntax errors"
    assert output(events, "mod", "stderr") == "go.mod:2: unknown directive: 123\n"


def test_imports_are_fixed_by_goimports_with_the_toolchains_standard_library(daemon):
    """``iter`` (Go 1.23) and ``weak`` (Go 1.24) are newer than Debian's goimports (0.5.0,
    2023): it finds them only in the toolchain's GOROOT, through its go command."""
    code = ('package main\nimport "os"\nfunc main(){\nvar s iter.Seq[int]\n'
            'p := weak.Make(&s)\nfmt.Println(p.Value() != nil) }\n')
    events = daemon.run(
        {"type": "fmt", "id": "i", "code": code, "imports": True},
        {"type": "fmt", "id": "plain", "code": code},
        {"type": "fmt", "id": "two", "imports": True,
         "code": "package main\n-- x/x.go --\npackage x\nvar V = strings.ToUpper\n"},
    )
    done = finals(events)
    assert done["i"]["status"] == "ok", (done["i"], output(events, "i"))
    assert done["i"]["code"] == ('package main\n\nimport (\n\t"fmt"\n\t"iter"\n\t"weak"\n)\n\n'
                                 'func main() {\n\tvar s iter.Seq[int]\n\tp := weak.Make(&s)\n'
                                 '\tfmt.Println(p.Value() != nil)\n}\n')
    assert '"os"' in done["plain"]["code"] and "iter" not in done["plain"]["code"].split(")")[0]
    assert done["two"]["code"] == ('package main\n-- x/x.go --\npackage x\n\nimport "strings"\n'
                                   '\nvar V = strings.ToUpper\n')


def test_without_goimports_imports_is_refused_saying_why_and_the_rest_goes_on(driver):
    d = Daemon(driver, "--goimports=off").start()
    try:
        with d.connect() as c:
            c.send({"type": "fmt", "id": "i", "code": "package main\n", "imports": True})
            refused = finals(c.read_until_done("i"))["i"]
            c.send({"type": "fmt", "id": "plain", "code": "package  main\n"})
            plain = finals(c.read_until_done("plain"))["plain"]
        assert "no goimports (apt-get install golang-golang-x-tools)" in d.log()
    finally:
        d.cleanup()
    assert (refused["status"], refused["phase"]) == ("bad_request", "queue")
    assert "goimports is not installed" in refused["message"]
    assert plain["status"] == "ok" and plain["code"] == "package main\n"


def test_the_client_formats_with_imports_and_a_go_mod_named(daemon, tmp_path):
    (tmp_path / "a.go").write_text("package main\nfunc main(){ fmt.Println() }\n")
    # A raw string holding a txtar marker line: one file, never read as an archive.
    raw = 'package main\n\nvar t = `\n-- x.go --\n`\n'
    (tmp_path / "raw.go").write_text(raw)
    (tmp_path / "go.mod").write_text("module   m\ngo 1.22\n")
    done = client(daemon, "fmt", "-imports", str(tmp_path / "a.go"), str(tmp_path / "raw.go"),
                  str(tmp_path / "go.mod"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.go").read_text() == ('package main\n\nimport "fmt"\n\n'
                                               'func main() { fmt.Println() }\n')
    assert (tmp_path / "raw.go").read_text() == raw
    assert (tmp_path / "go.mod").read_text() == "module m\n\ngo 1.22\n"
    (tmp_path / "go.mod").write_text("module m\n123\n")
    done = client(daemon, "fmt", str(tmp_path / "go.mod"))
    assert done.returncode == 2
    assert done.stderr.decode() == f"{tmp_path / 'go.mod'}:2: unknown directive: 123\n"
