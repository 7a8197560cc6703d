"""The HTTP face on a real daemon: NDJSON over HTTP, WebSocket, the go.dev/play API, the checks.

Every test runs real Go programs in bubblewrap boxes through a real ``twistd sandboxd`` with an
``--http`` listener on loopback (the face is the same under either driver).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse

import pytest

from tests.harness import driver_missing, finals, go_main
from tests.httpface import SAMPLE, RawHTTP, exchange, http_daemon

pytestmark = pytest.mark.skipif(driver_missing("bubblewrap") is not None,
                                reason="bubblewrap is not installed (make setup installs it)")


@pytest.fixture(scope="module")
def web():
    daemon, port = http_daemon("--http-origin=http://allowed.test:9000")
    try:
        yield daemon, port
    finally:
        daemon.cleanup()


def post_ndjson(port: int, path: str, request: dict, headers: dict | None = None):
    conn = RawHTTP(port)
    try:
        conn.request("POST", path, json.dumps(request).encode(), headers)
        status, head = conn.head()
        assert status == 200, conn.body(head)
        return head, conn.events()
    finally:
        conn.close()


def test_ndjson_arrives_live(web):
    """The README's sample: three lines a second apart, each in its own chunk as it happens."""
    _, port = web
    head, events = post_ndjson(port, "/v1/run", SAMPLE)
    assert head["content-type"].startswith("application/x-ndjson")
    assert head["transfer-encoding"] == "chunked"
    outputs = [(at, e) for at, e in events if not e.get("done")]
    assert [e["output"] for _, e in outputs] == ["Hello 0\n", "Hello 1\n", "Hello 2\n"]
    times = [at for at, _ in outputs]
    assert times[1] - times[0] > 0.7 and times[2] - times[1] > 0.7, times
    final_at, final = events[-1]
    assert final["done"] and final["status"] == "ok" and final["session_id"] == "user_1"
    assert final_at - times[2] > 0.7
    assert sum(1 for _, e in events if e.get("done")) == 1


def test_fmt_vet_version_over_http(web):
    _, port = web
    _, events = post_ndjson(port, "/v1/fmt", {"code": "package main\nfunc main(){}\n"})
    assert events[-1][1]["status"] == "ok"
    assert events[-1][1]["code"] == "package main\n\nfunc main() {}\n"
    _, events = post_ndjson(port, "/v1/vet", {"code": go_main('fmt.Printf("%d\\n", "x")')})
    assert events[-1][1]["status"] == "vet_issues"
    status, _, body = exchange(port, "GET", "/v1/version")
    assert status == 200 and json.loads(body)["go"]["default"].startswith("go1.")


def test_session_from_header_and_path(web):
    """A balancer routes by the header or the path; a body that disagrees is refused."""
    _, port = web
    write = go_main('os.WriteFile("f", []byte("kept"), 0o644)', imports=("os",))
    read = go_main('b, _ := os.ReadFile("f"); fmt.Print(string(b))', imports=("fmt", "os"))
    _, events = post_ndjson(port, "/v1/run", {"code": write}, {"Sandboxd-Session": "hs1"})
    first = events[-1][1]
    assert (first["session_id"], first["session_new"]) == ("hs1", True)
    _, events = post_ndjson(port, "/v1/sessions/hs1/run", {"code": read})
    assert "".join(e.get("output", "") for _, e in events) == "kept"
    second = events[-1][1]
    assert (second["session_id"], second["session_new"]) == ("hs1", False)
    # When the session expires if not used again (Unix ms, a string): later with each use.
    assert int(second["session_expires_at"]) > int(first["session_expires_at"])
    assert int(second["session_expires_at"]) > int(second["timestamp"])
    status, _, body = exchange(port, "POST", "/v1/run",
                               json.dumps({"code": read, "session_id": "other"}).encode(),
                               {"Sandboxd-Session": "hs1"})
    answer = json.loads(body)
    assert status == 400 and answer["status"] == "bad_request"
    assert "disagrees" in answer["message"]
    status, _, body = exchange(port, "POST", "/v1/sessions/hs1/run", json.dumps(
        {"code": read}).encode(), {"Sandboxd-Session": "hs2"})
    assert status == 400 and "disagrees" in json.loads(body)["message"]


def test_bad_requests_get_clear_4xx_json(web):
    _, port = web
    cases = [
        ("POST", "/v1/run", b"{not json", {}, 400, "not valid JSON"),
        ("POST", "/v1/run", b'{"type":"fmt","code":"x"}', {}, 400, "/v1/fmt"),
        ("POST", "/v1/run", b'{"type":"cancel","id":"a"}', {}, 400, "/v1/ws"),
        ("POST", "/v1/run", b'{"code":"x","bogus":1}', {}, 400, "bogus"),
        ("GET", "/v1/run", b"", {}, 405, "POST"),
        ("GET", "/nothing/here", b"", {}, 404, "no such resource"),
        ("GET", "/static/nothing.js", b"", {}, 404, "no such resource"),
        ("POST", "/compile", b"", {}, 400, "no program"),
        ("POST", "/_/fmt?backend=", b"[1]", {}, 400, "JSON body is"),
        ("GET", "/static/", b"", {}, 404, "no such resource"),
        ("DELETE", "/v1/run", b"", {}, 405, "not allowed here (allowed: "),
        ("POST", "/", b"", {}, 405, "allowed: GET"),
        ("POST", "/v1/sessions/s1/bogus", b"{}", {}, 404, "no such resource"),
        ("POST", "/v1/run", b"x" * (2 * 1024 * 1024 + 1), {}, 413, "longer than"),
    ]
    for method, path, body, headers, code, words in cases:
        status, head, answer = exchange(port, method, path, body, headers)
        event = json.loads(answer)
        assert status == code, (path, body[:40], status, answer)
        assert head["content-type"].startswith("application/json")
        assert event["status"] == "bad_request" and event["done"] is True
        assert words in event["message"], event["message"]
    # and the listener still works
    _, events = post_ndjson(port, "/v1/run", {"code": go_main('fmt.Println("still")')})
    assert events[-1][1]["status"] == "ok"


def test_host_and_origin_refused(web):
    """DNS rebinding (a foreign Host) and cross-origin pages are refused, before anything
    runs; an origin the operator allowed gets CORS headers and its preflight answered."""
    _, port = web
    body = json.dumps({"code": go_main('fmt.Println("x")')}).encode()
    status, _, answer = exchange(port, "POST", "/v1/run", body, {"Host": "evil.example:80"})
    assert status == 421 and "Host" in json.loads(answer)["message"]
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port + 1}"):
        status, head, answer = exchange(port, "POST", "/v1/run", body, {"Origin": origin})
        assert status == 403, origin
        assert "access-control-allow-origin" not in head
        assert "cross-origin" in json.loads(answer)["message"]
    status, _, _ = exchange(port, "POST", "/compile", b"body=x",
                            {"Origin": "http://evil.example",
                             "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403
    # The page's own origin and an allowed one pass.
    status, _, _ = exchange(port, "GET", "/v1/version", b"",
                            {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"})
    assert status == 200
    status, head, _ = exchange(port, "OPTIONS", "/v1/run", b"",
                               {"Origin": "http://allowed.test:9000",
                                "Access-Control-Request-Method": "POST"})
    assert status == 204
    assert head["access-control-allow-origin"] == "http://allowed.test:9000"
    conn = RawHTTP(port)
    conn.request("POST", "/v1/run", body, {"Origin": "http://allowed.test:9000"})
    status, head = conn.head()
    assert status == 200 and head["access-control-allow-origin"] == "http://allowed.test:9000"
    assert conn.events()[-1][1]["status"] == "ok"
    conn.close()
    # The page itself is served with Host checked too.
    status, _, _ = exchange(port, "GET", "/", b"", {"Host": "rebound.example"})
    assert status == 421
    status, head, page = exchange(port, "GET", "/", b"", {"Host": "localhost"})
    assert status == 200 and b"sandboxd" in page
    assert "default-src 'self'" in head["content-security-policy"]


def test_dropped_http_client_frees_its_box():
    """One box: a client that goes away mid-stream frees it for the next request at once."""
    daemon, port = http_daemon(boxes=1)
    try:
        loop = go_main('for i := 0; ; i++ { fmt.Println(i); time.Sleep(50 * time.Millisecond) }',
                       imports=("fmt", "time"))
        conn = RawHTTP(port)
        conn.request("POST", "/v1/run", json.dumps(
            {"code": loop, "limits": {"wall_ms": 120000, "cpu_ms": 120000}}).encode())
        assert conn.head()[0] == 200
        next(conn.chunks())  # it runs
        conn.close()
        start = time.monotonic()
        events = daemon.run({"id": "after", "code": go_main('fmt.Println("next")')})
        assert finals(events)["after"]["status"] == "ok"
        # Without the cancel the box would be held for the loop's 120 s.
        assert time.monotonic() - start < 30
    finally:
        daemon.cleanup()


def test_a_go_dev_play_client_that_goes_away_frees_its_box():
    """go.dev/play's /compile answers once the program ended; a client that leaves before then
    cancels the run (its box is free at once), as on the line protocol."""
    daemon, port = http_daemon(boxes=1)
    try:
        loop = go_main('for i := 0; ; i++ { fmt.Println(i); time.Sleep(50 * time.Millisecond) }',
                       imports=("fmt", "time"))
        conn = RawHTTP(port)
        conn.request("POST", "/compile", urllib.parse.urlencode({"version": "2", "body": loop})
                     .encode(), {"Content-Type": "application/x-www-form-urlencoded"})
        time.sleep(3)  # built, and running (or still building: a cancel frees the box too)
        conn.close()
        start = time.monotonic()
        events = daemon.run({"id": "after", "code": go_main('fmt.Println("next")')})
        assert finals(events)["after"]["status"] == "ok"
        # Without the cancel the box would be held until the run's wall limit (10 s).
        assert time.monotonic() - start < 6
    finally:
        daemon.cleanup()


def test_websocket_pipelining_stdin_cancel(web):
    from websockets.sync.client import connect

    _, port = web
    echo = ('package main\nimport ("bufio";"fmt";"os")\nfunc main(){ s := bufio.NewScanner('
            'os.Stdin); for s.Scan() { fmt.Println("got", s.Text()) } }\n')
    loop = go_main("for {}", imports=())
    with connect(f"ws://127.0.0.1:{port}/v1/ws", open_timeout=30) as ws:
        ws.send(json.dumps({"id": "echo", "code": echo, "interactive": True}))
        ws.send(json.dumps({"id": "loop", "code": loop}))
        ws.send(json.dumps({"id": "v", "type": "version"}))
        ws.send(json.dumps({"type": "stdin", "id": "echo", "data": "one\n"}))
        seen: dict[str, list[dict]] = {}
        got_one = False
        while not got_one:
            event = json.loads(ws.recv(timeout=60))
            seen.setdefault(event["id"], []).append(event)
            got_one = event.get("output") == "got one\n"
        # The program answered while it runs: stdin is interactive.
        assert "done" not in seen["echo"][-1]
        ws.send(json.dumps({"type": "stdin", "id": "echo", "data": "two\n", "eof": True}))
        ws.send(json.dumps({"type": "cancel", "id": "loop"}))
        ws.send(json.dumps({"type": "stdin", "id": "nobody", "data": "x"}))
        ends: dict = {}
        while len(ends) < 3:
            event = json.loads(ws.recv(timeout=60))
            seen.setdefault(event["id"], []).append(event)
            if event.get("done"):
                ends[event["id"] if event["id"] is not None else event.get("for_id")] = event
    assert seen["v"][0]["status"] == "ok"
    assert "".join(e.get("output", "") for e in seen["echo"]) == "got one\ngot two\n"
    assert ends["echo"]["status"] == "ok"
    assert ends["loop"]["status"] == "cancelled"
    assert ends["nobody"]["status"] == "bad_request" and ends["nobody"]["for_type"] == "stdin"


def test_websocket_long_and_bad_lines_are_refused_and_it_goes_on(web):
    from websockets.sync.client import connect

    _, port = web
    with connect(f"ws://127.0.0.1:{port}/v1/ws", open_timeout=30,
                 max_size=None) as ws:
        ws.send("x" * (2 * 1024 * 1024 + 1))
        event = json.loads(ws.recv(timeout=60))
        assert event["status"] == "bad_request" and "longer than" in event["message"]
        ws.send("{nope")
        event = json.loads(ws.recv(timeout=60))
        assert event["status"] == "bad_request" and "not valid JSON" in event["message"]
        ws.send(json.dumps({"id": "ok", "code": go_main('fmt.Println("after")')}))
        events = [json.loads(ws.recv(timeout=60)) for _ in range(2)]
        assert events[0]["output"] == "after\n" and events[1]["status"] == "ok"


def test_websocket_refused_cross_origin(web):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    _, port = web
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{port}/v1/ws", origin="http://evil.example", open_timeout=30)
    assert refused.value.response.status_code == 403


def compile_(port: int, prog: str, with_vet: bool = False) -> dict:
    form = {"version": "2", "body": prog}
    if with_vet:
        form["withVet"] = "true"
    status, head, body = exchange(port, "POST", "/compile",
                                  urllib.parse.urlencode(form).encode(),
                                  {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, body
    assert head["content-type"] == "application/json"
    return json.loads(body)


# Programs and answers from golang/playground's tests.go.
TEST_WITHOUT_IMPORT = """
package main

func TestSanity(t *testing.T) {
\tt.Error("uhh...")
}

func ExampleNotExecuted() {
\t// Output: it should not run
}
"""
TEST_PASSES = """
package main

import "testing"

func TestSanity(t *testing.T) {
\tif 1+1 != 2 {
\t\tt.Error("uhh...")
\t}
}
"""
STDOUT_STDERR = """
package main

import (
\t"fmt"
\t"os"
)

func main() {
\tfmt.Fprintln(os.Stdout, "A")
\tfmt.Fprintln(os.Stderr, "B")
\tfmt.Fprintln(os.Stdout, "A")
\tfmt.Fprintln(os.Stdout, "A")
}
"""
WITH_VET = """
package main
import "fmt"
func main() {
\tfmt.Printf("hi %v")
}
"""
NO_BANNER = """
package main

func main() {
\tprint()
}

-- foo.go --
package main

import "fmt"

func print() {
\t=fmt.Println("Hello, playground")
}
"""


VET_FINDING = re.compile(r"\./prog\.go:5:\d+: fmt\.Printf format %v reads arg #1, but call has "
                         r"0 args\n")


def test_compile_answers_the_playgrounds_tests(web):
    _, port = web
    keys = {"Errors", "Events", "Status", "IsTest", "TestsFailed"}
    answer = compile_(port, TEST_WITHOUT_IMPORT)
    assert answer["Errors"] == "./prog_test.go:4:20: undefined: testing\n"
    assert set(answer) == keys
    answer = compile_(port, NO_BANNER)
    assert answer["Errors"] == "./foo.go:6:2: syntax error: unexpected =, expected }\n"
    answer = compile_(port, TEST_PASSES)
    text = "".join(e["Message"] for e in answer["Events"])
    assert text.startswith("=== RUN   TestSanity\n--- PASS: TestSanity (0.00s)\nPASS")
    assert answer["IsTest"] is True and answer["TestsFailed"] == 0 and answer["Status"] == 0
    answer = compile_(port, STDOUT_STDERR)
    # The Playground's exact interleaving, from the fake clock's timestamps (tests.go's
    # stdout_stderr_merge; the fake nanosecond between streams as its faketime_write_interaction).
    assert answer["Events"] == [{"Message": "A\n", "Kind": "stdout", "Delay": 0},
                                {"Message": "B\n", "Kind": "stderr", "Delay": 1},
                                {"Message": "A\nA\n", "Kind": "stdout", "Delay": 1}]
    assert answer["Errors"] == "" and answer["Status"] == 0 and set(answer) == keys
    answer = compile_(port, WITH_VET, with_vet=True)
    # The Playground's go1.2x vet says column 2; go1.27's vet points at the %v (column 17).
    assert VET_FINDING.fullmatch(answer["VetErrors"]), answer["VetErrors"]
    assert "VetOK" not in answer
    answer = compile_(port, STDOUT_STDERR, with_vet=True)
    assert answer["VetOK"] is True and "VetErrors" not in answer
    answer = compile_(port, go_main('panic("boom")', imports=()))
    assert answer["Status"] == 2 and answer["Errors"] == ""
    assert "panic: boom" in "".join(e["Message"] for e in answer["Events"])


def test_playground_fmt_and_vet(web):
    _, port = web
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, body = exchange(port, "POST", "/fmt", urllib.parse.urlencode(
        {"body": "package main\nfunc main(){println(1)}"}).encode(), form)
    assert status == 200
    assert json.loads(body) == {"Body": "package main\n\nfunc main() { println(1) }\n",
                                "Error": ""}
    status, _, body = exchange(port, "POST", "/fmt", urllib.parse.urlencode(
        {"body": "package main\nfunc main({", "imports": "true"}).encode(), form)
    answer = json.loads(body)
    assert answer["Body"] == "" and answer["Error"].startswith("prog.go:2:11: ")
    status, _, body = exchange(port, "POST", "/vet", urllib.parse.urlencode(
        {"body": WITH_VET}).encode(), form)
    assert VET_FINDING.fullmatch(json.loads(body)["Errors"])
    # The Playground's JSON body works too.
    status, _, body = exchange(port, "POST", "/compile",
                               json.dumps({"Body": STDOUT_STDERR}).encode())
    assert status == 200 and json.loads(body)["Events"]
    # go.dev's front end posts under /_/ (with ?backend=).
    status, _, body = exchange(port, "POST", "/_/compile?backend=", urllib.parse.urlencode(
        {"version": "2", "body": STDOUT_STDERR}).encode(), form)
    assert status == 200 and json.loads(body)["Errors"] == ""


def test_shutdown_ends_an_http_stream_with_its_final_event():
    """SIGTERM: a request streaming over HTTP is one of the daemon's requests like any other:
    it gets the grace period, then its one final event (cancelled), and the stream ends."""
    daemon, port = http_daemon("--shutdown-grace=1")
    try:
        loop = go_main('for i := 0; ; i++ { fmt.Println(i); time.Sleep(100 * time.Millisecond) }',
                       imports=("fmt", "time"))
        conn = RawHTTP(port)
        conn.request("POST", "/v1/run", json.dumps({"code": loop}).encode())
        assert conn.head()[0] == 200
        chunks = conn.chunks()
        next(chunks)
        daemon.proc.send_signal(15)
        lines = b"".join(chunk for _, chunk in chunks).splitlines()
        conn.close()
        events = [json.loads(line) for line in lines]
        ends = [e for e in events if e.get("done")]
        assert len(ends) == 1 and events[-1] is ends[0]
        assert ends[0]["status"] == "cancelled"
        assert "shutting down" in ends[0]["message"]
        assert daemon.proc.wait(timeout=60) in (0, -15)  # as tests/system/test_operations.py
        assert "sandboxd stopped; every box removed" in daemon.log()
    finally:
        daemon.cleanup()


def test_http_connections_are_bounded():
    """At --max-connections the HTTP connection idle the longest is closed for a new one; when
    every one is busy, the new one is refused, and the busy ones go on."""
    daemon, port = http_daemon("--max-connections=2")
    try:
        sleeper = go_main('fmt.Println("start"); time.Sleep(3 * time.Second); '
                          'fmt.Println("done")', imports=("fmt", "time"))
        idle = RawHTTP(port)
        status, _, _ = exchange(port, "GET", "/v1/version")  # a second, short-lived one
        assert status == 200
        busy = []
        for _ in range(2):  # two streaming requests: the idle connection makes room
            conn = RawHTTP(port)
            conn.request("POST", "/v1/run", json.dumps({"code": sleeper}).encode())
            assert conn.head()[0] == 200
            busy.append(conn)
        with pytest.raises((EOFError, ConnectionError)):
            idle.request("GET", "/v1/version")
            idle.head()
        refused = RawHTTP(port)
        with pytest.raises((EOFError, ConnectionError)):
            refused.request("GET", "/v1/version")
            refused.head()
        for conn in busy:
            events = conn.events()
            assert events[-1][1]["status"] == "ok"
            assert "".join(e.get("output", "") for _, e in events) == "start\ndone\n"
            conn.close()
        assert exchange(port, "GET", "/v1/version")[0] == 200
    except BaseException:
        print(daemon.log())
        raise
    finally:
        daemon.cleanup()


def test_https_with_client_certificates(tmp_path):
    """An ssl: --http listener with --client-ca demands a client certificate from that CA,
    as --listen does; with one, NDJSON streams as over plain HTTP."""
    import ssl
    import urllib.request

    from tests.certs import make_certs
    from tests.httpface import free_port

    certs = make_certs(tmp_path)
    tls_port = free_port()
    daemon, _ = http_daemon(
        f"--http=ssl:{tls_port}:interface=127.0.0.1:privateKey={certs.server_key}:"
        f"certKey={certs.server}", f"--client-ca={certs.ca}")
    try:
        url = f"https://127.0.0.1:{tls_port}/v1/run"
        body = json.dumps({"code": go_main('fmt.Println("over tls")')}).encode()

        def post(cert=None, key=None):
            context = ssl.create_default_context(cafile=str(certs.ca))
            if cert is not None:
                context.load_cert_chain(str(cert), str(key))
            req = urllib.request.Request(url, data=body, method="POST")
            with urllib.request.urlopen(req, context=context, timeout=60) as answer:
                return [json.loads(line) for line in answer]

        events = post(certs.client, certs.client_key)
        assert events[0]["output"] == "over tls\n" and events[-1]["status"] == "ok"
        for cert, key in ((None, None), (certs.stranger, certs.stranger_key)):
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                post(cert, key)
    finally:
        daemon.cleanup()


CONTROLS = "del\x7f nel\x85 csi\x9b[2J ls\u2028 ps\u2029 esc\x1b[31m bel\x07"


def test_control_characters_reach_web_clients_only_as_escapes(web):
    """As on the line protocol: DEL, C1, U+2028/U+2029 and C0 controls a program prints travel
    as JSON escapes over WebSocket and in go.dev/play's /compile answer (the raw bytes carry
    none of them), and decode back to the same text."""
    from websockets.sync.client import connect

    _, port = web
    prog = go_main(f"fmt.Print({json.dumps(CONTROLS)})", imports=("fmt",))
    raw: list[str] = []
    with connect(f"ws://127.0.0.1:{port}/v1/ws", open_timeout=30) as ws:
        ws.send(json.dumps({"id": "c", "code": prog}))
        while True:
            message = ws.recv(timeout=60)
            raw.append(message)
            if json.loads(message).get("done"):
                break
    text = "".join(json.loads(m).get("output", "") for m in raw)
    assert text == CONTROLS
    for message in raw:
        assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", message), repr(message)
    assert any("\\u007f" in m and "\\u009b" in m and "\\u2028" in m for m in raw)
    form = {"version": "2", "body": prog}
    status, _, body = exchange(port, "POST", "/compile", urllib.parse.urlencode(form).encode(),
                               {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    decoded = body.decode("utf-8")
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", decoded), repr(decoded)
    assert "".join(e["Message"] for e in json.loads(body)["Events"]) == CONTROLS
