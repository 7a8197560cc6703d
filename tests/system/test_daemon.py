"""The daemon end to end: real Go, a real sandbox, a real daemon on a real Unix socket."""

from __future__ import annotations

import itertools
import json

from tests.harness import finals, go_main, output

SAMPLE = (
    "package main\n\nimport (\n\t\"fmt\"\n\t\"time\"\n)\n\nfunc main() {\n"
    "\tfor i := 0; i < 3; i++ {\n\t\tfmt.Println(\"Hello\", i)\n"
    "\t\ttime.Sleep(time.Second)\n\t}\n}\n"
)


def test_original_sample_streams_live(daemon):
    events = daemon.run({"code": SAMPLE, "session_id": "user_1"})
    chunks = [e for e in events if not e.get("done")]
    assert [c["output"] for c in chunks] == ["Hello 0\n", "Hello 1\n", "Hello 2\n"]
    for c in chunks:
        assert c["stream"] == "stdout" and c["is_error"] is False and c["exec_err"] == ""
        assert c["timestamp"].isdigit() and c["id"] == events[-1]["id"]
    # Streamed as written: about a second apart on arrival, not all at the end.
    gaps = [b["_received"] - a["_received"] for a, b in itertools.pairwise(chunks)]
    assert all(0.5 < g < 3 for g in gaps), gaps
    stamps = [int(c["timestamp"]) for c in chunks]
    assert all(700 < b - a < 2000 for a, b in itertools.pairwise(stamps)), stamps
    final = events[-1]
    assert final["done"] is True and final["status"] == "ok" and final["exit_code"] == 0
    assert final["wall_ms"] >= 2900 and final["phase"] == "run"
    assert isinstance(final["time_ms"], int) and isinstance(final["memory_kb"], int)


def test_compile_error_is_cleaned(daemon):
    code = go_main('\ttime.Slseep(1)\n\tfmt.Println("x")', imports=("fmt", "time"))
    events = daemon.run({"code": code, "id": "c1"})
    final = finals(events)["c1"]
    assert final["status"] == "compile_error" and final["phase"] == "build"
    text = output(events, "c1")
    assert "main.go:9:7: undefined: time.Slseep" in text
    assert "# " not in text and "/src/" not in text and str(daemon.state_dir) not in text
    assert all(e["stream"] == "stderr" for e in events if not e.get("done"))


def test_panic_is_runtime_error_on_stderr(daemon):
    code = go_main('\tfmt.Println("before")\n\tpanic("boom")')
    events = daemon.run({"code": code, "id": "p1"})
    final = finals(events)["p1"]
    assert final["status"] == "runtime_error" and final["exit_code"] == 2
    assert output(events, "p1", "stdout") == "before\n"
    assert "panic: boom" in output(events, "p1", "stderr")


def test_session_keeps_files_and_others_do_not_see_them(daemon):
    write = go_main('\tos.WriteFile("/box/note.txt", []byte("kept"), 0o600)\n\tfmt.Println("w")',
                    imports=("fmt", "os"))
    read = go_main(
        '\tb, err := os.ReadFile("/box/note.txt")\n\tfmt.Printf("%s|%v\\n", b, err != nil)',
        imports=("fmt", "os"),
    )
    daemon.run({"code": write, "session_id": "alice", "id": "w"})
    same = daemon.run({"code": read, "session_id": "alice", "id": "r"})
    assert output(same, "r") == "kept|false\n"
    other = daemon.run({"code": read, "session_id": "bob", "id": "r2"})
    assert output(other, "r2") == "|true\n"
    anon = daemon.run({"code": read, "id": "r3"})
    assert output(anon, "r3") == "|true\n"


def test_anonymous_boxes_hold_nothing_of_earlier_requests(daemon):
    write = go_main('\tos.WriteFile("left.txt", []byte("x"), 0o644)\n'
                    '\tos.WriteFile("/tmp/left.txt", []byte("x"), 0o644)',
                    imports=("os",))
    look = go_main(
        '\t_, a := os.Stat("left.txt")\n\t_, b := os.Stat("/tmp/left.txt")\n'
        '\tfmt.Println(a != nil, b != nil)',
        imports=("fmt", "os"),
    )
    for i in range(4):  # more than the boxes, so every box is reused
        daemon.run({"code": write, "id": f"w{i}"})
    events = daemon.run(*[{"code": look, "id": f"l{i}"} for i in range(4)])
    for i in range(4):
        assert output(events, f"l{i}") == "true true\n"


def test_more_requests_than_boxes_all_finish_and_pipeline(daemon):
    code = go_main('\ttime.Sleep(300 * time.Millisecond)\n\tfmt.Println("hi")',
                   imports=("fmt", "time"))
    requests = [{"code": code, "id": f"m{i}"} for i in range(6)]
    events = daemon.run(*requests)
    done = finals(events)
    assert sorted(done) == sorted(f"m{i}" for i in range(6))
    assert all(done[f"m{i}"]["status"] == "ok" for i in range(6))
    for i in range(6):
        assert output(events, f"m{i}") == "hi\n"


def test_half_close_finishes_pending_then_closes(daemon):
    code = go_main('\ttime.Sleep(500 * time.Millisecond)\n\tfmt.Println("late")',
                   imports=("fmt", "time"))
    with daemon.connect() as client:
        client.send({"code": code, "id": "h"})
        client.shutdown_write()
        events = client.read_all()  # returns only at EOF: the server closed by itself
    assert finals(events)["h"]["status"] == "ok"
    assert output(events, "h") == "late\n"


def test_server_assigns_ids(daemon):
    events = daemon.run({"code": go_main('\tfmt.Println("a")')},
                        {"code": go_main('\tfmt.Println("b")')})
    ids = [e["id"] for e in events if e.get("done")]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(ids)


def test_bad_line_gets_bad_request_and_connection_keeps_working(daemon):
    events = daemon.run(b"{not json\n", json.dumps({"code": go_main('\tfmt.Println("ok")'),
                                                    "id": "after"}))
    bad = [e for e in events if e.get("done") and e["status"] == "bad_request"]
    assert len(bad) == 1 and "not valid JSON" in bad[0]["message"]
    assert finals(events)["after"]["status"] == "ok"


def test_only_the_box_tmp_and_shm_are_writable(daemon):
    places = ["/", "/prog", "/var", "/usr", "/box", "/tmp", "/dev/shm"]
    body = (
        f"\tfor _, d := range []string{{{', '.join(json.dumps(p) for p in places)}}} {{\n"
        '\t\terr := os.WriteFile(filepath.Join(d, "probe"), []byte("1"), 0o644)\n'
        '\t\tfmt.Println(d, err == nil)\n\t}'
    )
    events = daemon.run({"code": go_main(body, imports=("fmt", "os", "path/filepath")),
                         "id": "w"})
    assert finals(events)["w"]["status"] == "ok"
    seen = dict(line.split() for line in output(events, "w", "stdout").splitlines())
    assert seen == {"/": "false", "/prog": "false", "/var": "false", "/usr": "false",
                    "/box": "true", "/tmp": "true", "/dev/shm": "true"}


def test_a_small_output_limit_still_shows_the_start_of_a_compile_error(daemon):
    events = daemon.run({"code": "package main\nfunc main(){x}\n", "id": "small",
                         "limits": {"output_bytes": 10}})
    assert finals(events)["small"]["status"] == "compile_error"
    assert output(events, "small", "stderr") == "main.go:2:"  # cleaned, then cut at 10 bytes
