"""``//GOEXPERIMENT=`` header lines set the experiment of that build, as on the Go Playground
(issue 10, item 6): real programs in real boxes through a real daemon.

The experiment here is ``heapminimum512kib`` (go1.27's internal/goexperiment): off by default,
and a build with it sets the build tag ``goexperiment.heapminimum512kib``, so a program can say
which way it was built.  A build with any experiment compiles its standard-library packages
again (the shared cache holds them built without one): 5-12 s on this 2-core machine, so those
requests get more build time.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.harness import Daemon, finals, output
from tests.httpface import exchange, http_daemon
from tests.system.test_heldbuild import one_launcher

EXPERIMENT = "heapminimum512kib"
SLOW_BUILD = {"build": {"wall_ms": 120_000, "cpu_ms": 240_000}}


def program(header: str) -> dict[str, str]:
    """A program that prints whether it was built with the experiment."""
    return {
        "main.go": f"{header}package main\n\nfunc main() {{ println(mode) }}\n",
        "on.go": f"//go:build goexperiment.{EXPERIMENT}\n\npackage main\n\n"
                 'const mode = "on"\n',
        "off.go": f"//go:build !goexperiment.{EXPERIMENT}\n\npackage main\n\n"
                  'const mode = "off"\n',
    }


@pytest.fixture(scope="module")
def daemon(driver: str):
    d = Daemon(driver, boxes=1).start()
    try:
        yield d
    finally:
        d.cleanup()


def test_an_unknown_experiment_is_the_go_commands_compile_error_even_in_a_held_build(daemon):
    """The first request takes the build held ahead for its box when its settings are the
    default ones; that launcher was made with the toolchain's environment, so a request with
    a header must not take it (it would build without the experiment: here, run fine)."""
    one_launcher(daemon)
    events = daemon.run({"id": "bad", "files": program("//GOEXPERIMENT=bogusexperiment\n\n")})
    final = finals(events)["bad"]
    assert final["status"] == "compile_error" and final["phase"] == "build", final
    assert output(events, "bad", "stderr") == "go: unknown GOEXPERIMENT bogusexperiment\n"


def test_the_header_sets_the_experiment_and_is_part_of_the_cache_key(daemon):
    with_header = program(f"// GOEXPERIMENT = {EXPERIMENT}\n\n")
    events = daemon.run(
        {"id": "on", "files": with_header, "limits": SLOW_BUILD},
        {"id": "off", "files": program(""), "limits": SLOW_BUILD},
        {"id": "again", "files": with_header, "limits": SLOW_BUILD},
    )
    done = finals(events)
    assert done["on"]["status"] == "ok", (done["on"], output(events, "on"))
    assert output(events, "on", "stderr") == "on\n" and done["on"]["cached"] is False
    assert done["off"]["status"] == "ok" and done["off"]["cached"] is False
    assert output(events, "off", "stderr") == "off\n"
    assert done["again"]["cached"] is True and output(events, "again", "stderr") == "on\n"


def test_tests_and_vet_are_built_with_the_experiment_too(daemon):
    tests = {"main.go": "//GOEXPERIMENT=bogusexperiment\npackage main\n\nimport \"testing\"\n\n"
                        "func TestX(t *testing.T) {}\n"}
    events = daemon.run({"id": "test", "files": tests},
                        {"id": "vet", "type": "vet", "files": tests})
    done = finals(events)
    for rid in ("test", "vet"):
        assert done[rid]["status"] == "compile_error", done[rid]
        assert "go: unknown GOEXPERIMENT bogusexperiment" in output(events, rid, "stderr")


def test_a_header_the_go_command_cannot_be_given_is_a_compile_error_naming_it(daemon):
    events = daemon.run({"id": "nul", "code": "//GOEXPERIMENT=a\u0000b\npackage main\n\n"
                                              "func main() {}\n"})
    final = finals(events)["nul"]
    assert final["status"] == "compile_error", final
    assert output(events, "nul", "stderr").startswith("main.go: //GOEXPERIMENT=")
    with daemon.connect() as client:  # the daemon and the connection go on
        client.send({"id": "after", "code": "package main\n\nfunc main() { println(1) }\n"})
        assert finals(client.read_until_done("after"))["after"]["status"] == "ok"


def test_the_playgrounds_compile_reads_the_header_too():
    """go.dev/play's /compile: the header reaches the build as on the Playground."""
    d, port = http_daemon()
    try:
        status, _, body = exchange(port, "POST", "/compile", urllib.parse.urlencode(
            {"version": "2", "body": "// GOEXPERIMENT=bogusexperiment\npackage main\n\n"
                                     "func main() {}\n"}).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"})
    finally:
        d.cleanup()
    assert status == 200
    assert json.loads(body)["Errors"] == "go: unknown GOEXPERIMENT bogusexperiment\n"
