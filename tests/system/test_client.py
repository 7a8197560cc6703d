"""``sandboxd-client`` as a user runs it: a subprocess against a real daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness import HANG, Daemon, go_main

CLIENT = Path(sys.executable).parent / "sandboxd-client"

ECHO = go_main(
    '\tin := bufio.NewScanner(os.Stdin)\n'
    '\tfor in.Scan() {\n\t\tfmt.Println("got", strings.ToUpper(in.Text()))\n\t}\n'
    '\tfmt.Fprintln(os.Stderr, "bye")\n\tos.Exit(3)',
    imports=("bufio", "fmt", "os", "strings"),
)


def client(daemon, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "SANDBOXD_CONNECT": f"unix:{daemon.socket_path}"}
    return subprocess.run([str(CLIENT), *args], env=env, capture_output=True, timeout=HANG, **kw)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return tmp_path


def test_run_forwards_stdin_splits_streams_and_exits_with_the_programs_status(daemon, src):
    (src / "main.go").write_text(ECHO)
    done = client(daemon, "run", str(src / "main.go"), input=b"one\ntwo\n")
    assert done.stdout == b"got ONE\ngot TWO\n"
    assert done.stderr == b"bye\n"
    assert done.returncode == 3


def test_run_a_directory_with_a_package(daemon, src):
    (src / "main.go").write_text(
        'package main\n\nimport "sandbox/greet"\n\nfunc main() { greet.Hi("dir") }\n')
    (src / "greet").mkdir()
    (src / "greet" / "greet.go").write_text(
        'package greet\n\nimport "fmt"\n\nfunc Hi(s string) { fmt.Println("hi", s) }\n')
    done = client(daemon, "run", str(src), stdin=subprocess.DEVNULL)
    assert (done.stdout, done.returncode) == (b"hi dir\n", 0), done.stderr


def test_limits_and_compile_errors_give_one_line_and_non_zero(daemon, src):
    (src / "bad.go").write_text(go_main("\tundefinedThing()"))
    done = client(daemon, "run", str(src / "bad.go"), stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert b"main.go:" in done.stderr or b"bad.go:" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(b"sandboxd: compile_error:")
    (src / "slow.go").write_text(go_main("\ttime.Sleep(time.Minute)", imports=("time",)))
    done = client(daemon, "run", "--limit", "run.wall_ms=500", str(src / "slow.go"),
                  stdin=subprocess.DEVNULL)
    assert done.returncode == 124
    assert done.stderr.startswith(b"sandboxd: timeout:") and done.stderr.count(b"\n") == 1


def test_ctrl_c_cancels_the_program(daemon, src):
    (src / "main.go").write_text(go_main(
        '\tfor i := 0; ; i++ {\n\t\tfmt.Println("tick", i)\n'
        '\t\ttime.Sleep(100 * time.Millisecond)\n\t}', imports=("fmt", "time")))
    env = {**os.environ, "SANDBOXD_CONNECT": f"unix:{daemon.socket_path}"}
    proc = subprocess.Popen([str(CLIENT), "run", str(src / "main.go")], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    guard = threading.Timer(HANG, proc.kill)  # a hang fails the test instead of blocking it
    guard.start()
    try:
        assert proc.stdout.readline() == b"tick 0\n"  # it runs, live
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        _out, err = proc.communicate(timeout=HANG)
    finally:
        guard.cancel()
        proc.kill()
    assert proc.returncode == 130
    assert b"sandboxd: cancelled" in err
    assert time.monotonic() - start < 5  # at once, not at the 10 s wall limit


def test_fmt_rewrites_files_and_d_prints_a_diff(daemon, src):
    ugly = "package main\nfunc main(){\nprintln( 1 )}\n"
    (src / "a.go").write_text(ugly)
    done = client(daemon, "fmt", "-d", str(src / "a.go"))
    assert done.returncode == 0 and b"+\tprintln(1)" in done.stdout
    assert (src / "a.go").read_text() == ugly
    done = client(daemon, "fmt", str(src / "a.go"))
    assert done.returncode == 0
    assert (src / "a.go").read_text() == "package main\n\nfunc main() {\n\tprintln(1)\n}\n"
    (src / "b.go").write_text("package main\nfunc main( {\n")
    done = client(daemon, "fmt", str(src / "b.go"))
    assert done.returncode == 2 and done.stderr.startswith(f"{src / 'b.go'}:2:".encode())


def test_vet_test_and_version(daemon, src):
    (src / "main.go").write_text(go_main('\tfmt.Printf("%d\\n", "x")'))
    done = client(daemon, "vet", str(src / "main.go"))
    assert done.returncode == 1 and b"main.go:8:" in done.stderr and b"wrong type" in done.stderr
    # the findings, then one line saying why the exit status is 1
    assert done.stderr.decode().splitlines()[-1] == "sandboxd: vet_issues: go vet found 1 issue"
    t = src / "t"
    t.mkdir()
    (t / "x_test.go").write_text(
        'package main\n\nimport "testing"\n\nfunc TestOK(t *testing.T) {}\n'
        'func TestBad(t *testing.T) { t.Error("bad") }\n')
    done = client(daemon, "test", str(t), stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert b"--- PASS: TestOK" in done.stdout and b"--- FAIL: TestBad" in done.stdout
    done = client(daemon, "version")
    assert done.returncode == 0
    assert done.stdout.startswith(b"sandboxd ") and b"go default: go1." in done.stdout


def test_every_request_gets_its_own_id(daemon, src):
    """The daemon logs each request by id; the client used to send "run" for every one."""
    (src / "main.go").write_text(go_main('\tfmt.Println("x")'))
    before = len(daemon.log())
    for command in ("run", "run", "vet"):
        assert client(daemon, command, str(src / "main.go"),
                      stdin=subprocess.DEVNULL).returncode == 0
    ids = re.findall(r"request (\S+) session=", daemon.log()[before:])
    mine = [i for i in ids if re.fullmatch(r"(run|vet)-[0-9a-f]{12}", i)]
    assert len(mine) == 3 and len(set(mine)) == 3, ids


def test_unreachable_server_is_one_line(tmp_path):
    env = {**os.environ, "SANDBOXD_CONNECT": f"unix:{tmp_path / 'nothing'}"}
    done = subprocess.run([str(CLIENT), "version"], env=env, capture_output=True, timeout=HANG)
    assert done.returncode == 1 and done.stderr.count(b"\n") == 1
    assert b"Traceback" not in done.stderr


@pytest.fixture(scope="module")
def tls_daemon(driver, tmp_path_factory):
    from tests.certs import make_certs
    from tests.system.test_listeners import free_port, wait_port

    certs = make_certs(tmp_path_factory.mktemp("certs"))
    port = free_port()
    d = Daemon(driver, f"--client-ca={certs.ca}", listen=[
        f"ssl:{port}:interface=127.0.0.1:privateKey={certs.server_key}:certKey={certs.server}"])
    try:
        d.start()
        wait_port(port)
        yield d, port, certs
    finally:
        d.cleanup()


def test_tls_with_a_client_certificate_and_the_servers_name_checked(tls_daemon, tmp_path):
    _, port, certs = tls_daemon
    roots = tmp_path / "roots"
    roots.mkdir()
    shutil.copy(certs.ca, roots / "ca.pem")
    others = tmp_path / "others"
    others.mkdir()
    shutil.copy(certs.ca.parent / "other-ca.pem", others / "ca.pem")
    mine = f"certificate={certs.client}:privateKey={certs.client_key}"

    def version(endpoint: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(CLIENT), "--connect", endpoint, "version"],
                              capture_output=True, timeout=HANG)

    good = version(f"tls:localhost:{port}:trustRoots={roots}:{mine}")
    assert good.returncode == 0 and good.stdout.startswith(b"sandboxd "), good.stderr
    (tmp_path / "main.go").write_text(go_main('\tfmt.Println("over tls")'))
    ran = subprocess.run([str(CLIENT), "--connect",
                          f"tls:localhost:{port}:trustRoots={roots}:{mine}", "run",
                          str(tmp_path / "main.go")], stdin=subprocess.DEVNULL,
                         capture_output=True, timeout=HANG)
    assert (ran.returncode, ran.stdout) == (0, b"over tls\n"), ran.stderr
    bad_ones = [f"tls:localhost:{port}:trustRoots={others}:{mine}",  # unknown server CA
                f"tls:localhost:{port}:trustRoots={roots}"]  # no client certificate
    other_name = socket.gethostname()  # reaches the server, but is not a name in its cert
    if other_name != "localhost" and _resolves_to_loopback(other_name):
        bad_ones.append(f"tls:{other_name}:{port}:trustRoots={roots}:{mine}")
    for endpoint in bad_ones:
        bad = version(endpoint)
        assert bad.returncode != 0 and b"sandboxd 0" not in bad.stdout, endpoint
        assert b"Traceback" not in bad.stderr and bad.stderr.count(b"\n") == 1, bad.stderr


def _resolves_to_loopback(name: str) -> bool:
    try:
        return socket.gethostbyname(name) == "127.0.0.1"
    except OSError:
        return False


def test_server_text_is_shown_with_its_control_characters_escaped(tmp_path):
    """A hostile (or broken) server's messages cannot drive the user's terminal: the client
    shows control characters, C1, bidi overrides and line separators in them as escapes.
    (A fake server: this is the client's own logic.)"""
    path = str(tmp_path / "fake.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    nasty = "\x1b]0;owned\x07\x1b[2J\x9b31m\x85\u2028\u202eok"

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                line += conn.recv(65536)
            request_id = json.loads(line)["id"]
            conn.sendall(json.dumps({"id": request_id, "done": True, "status": "internal_error",
                                     "message": nasty}).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    env = {**os.environ, "SANDBOXD_CONNECT": f"unix:{path}"}
    done = subprocess.run([str(CLIENT), "version"], env=env, capture_output=True, timeout=HANG)
    thread.join(HANG)
    server.close()
    err = done.stderr.decode()
    assert done.returncode != 0 and "internal_error" in err, err
    assert not any(c in err for c in "\x1b\x07\x9b\x85\u2028\u202e"), repr(err)
    assert "\\x1b]0;owned\\x07" in err and "\\x9b31m" in err and "\\u202eok" in err, repr(err)


def test_run_faketime_is_the_playgrounds_clock(daemon, src):
    """``-faketime``: time starts at the Playground's 2009-11-10 23:00:00 UTC, an hour's sleep
    costs nothing, and stderr/stdout come in the order they were written (each to its own)."""
    (src / "main.go").write_text(go_main(
        '\tfmt.Println(time.Now().UTC())\n\ttime.Sleep(time.Hour)\n'
        '\tfmt.Fprintln(os.Stderr, time.Now().UTC())', imports=("fmt", "os", "time")))
    done = client(daemon, "run", "-faketime", str(src / "main.go"), stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"2009-11-10 23:00:00 +0000 UTC\n"
    assert done.stderr == b"2009-11-11 00:00:00 +0000 UTC\n"
