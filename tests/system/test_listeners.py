"""Listeners through a real daemon: TLS with client certificates (Python's ssl and openssl
s_client), Unix sockets (mode, socat, nc -N), systemd socket activation, Tor's onion: string."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.certs import Certs, make_certs
from tests.harness import DRIVERS, HANG, Client, Daemon, driver_missing, finals, go_main, output

HERE = Path(__file__).resolve().parent.parent  # tests/, where listen_fds.py is
PROGRAM = go_main('\tfmt.Println(strings.Repeat("ab", 3), 6*7)', imports=("fmt", "strings"))
EXPECTED = "ababab 42\n"


def first_driver() -> str:
    for driver in DRIVERS:
        if driver_missing(driver) is None:
            return driver
    pytest.skip("no sandbox driver is installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    deadline = time.monotonic() + HANG
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def open_socket(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("open") / "world.sock")


@pytest.fixture(scope="module")
def served(certs: Certs, open_socket: str):
    """One daemon: the harness's Unix socket, a TLS port with --client-ca, a mode=666 socket."""
    port = free_port()
    d = Daemon(first_driver(), f"--client-ca={certs.ca}", listen=[
        f"ssl:{port}:interface=127.0.0.1:privateKey={certs.server_key}:certKey={certs.server}",
        f"unix:{open_socket}:mode=666",
    ])
    d.tls_port = port
    try:
        d.start()
        wait_port(port)
        yield d
    finally:
        d.cleanup()


def tls_connect(port: int, certs: Certs, cert: Path | None = None, key: Path | None = None,
                version: ssl.TLSVersion | None = None) -> Client:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    if version is not None:
        context.minimum_version = context.maximum_version = version
    raw = socket.create_connection(("127.0.0.1", port), timeout=HANG)
    try:
        return Client(sock=context.wrap_socket(raw, server_hostname="localhost"))
    except BaseException:
        raw.close()
        raise


def request_line(request_id: str) -> str:
    return json.dumps({"id": request_id, "code": PROGRAM})


# -- TLS -------------------------------------------------------------------------------------

def test_tls_client_with_certificate_runs_a_go_program(served: Daemon, certs: Certs):
    with tls_connect(served.tls_port, certs, certs.client, certs.client_key) as client:
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert dict(x[0] for x in client.sock.getpeercert()["subject"])["commonName"] == \
            "server"
        client.send(request_line("t1"))
        events = client.read_until_done("t1")
    assert finals(events)["t1"]["status"] == "ok"
    assert output(events, "t1") == EXPECTED


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_tls_client_refused_at_handshake(served: Daemon, certs: Certs, who: str):
    cert, key = (None, None) if who == "no certificate" else (certs.stranger,
                                                              certs.stranger_key)
    # TLS 1.2: the server's verdict on the client certificate ends the handshake itself.
    with pytest.raises(ssl.SSLError) as refused:
        tls_connect(served.tls_port, certs, cert, key, ssl.TLSVersion.TLSv1_2)
    assert "alert" in str(refused.value)
    # TLS 1.3: the client finishes its side first; the server's alert arrives on the first
    # read, and no request is ever served.
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)) as refused:
        with tls_connect(served.tls_port, certs, cert, key, ssl.TLSVersion.TLSv1_3) as client:
            client.send(request_line("never"))
            assert client.read_event(HANG) is None
    assert "never" not in served.log()


def test_openssl_s_client_with_certificate(served: Daemon, certs: Certs):
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{served.tls_port}", "-quiet",
         "-CAfile", str(certs.ca), "-verify_return_error",
         "-cert", str(certs.client), "-key", str(certs.client_key)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin and proc.stdout
        proc.stdin.write(request_line("s1").encode() + b"\n")
        proc.stdin.flush()
        events = []
        deadline = time.monotonic() + HANG
        while not any(e.get("done") for e in events) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            events.append(json.loads(line))
    finally:
        proc.kill()
        proc.wait()
    assert finals(events)["s1"]["status"] == "ok"
    assert output(events, "s1") == EXPECTED


def test_openssl_s_client_without_certificate_is_refused(served: Daemon, certs: Certs):
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{served.tls_port}", "-quiet",
         "-CAfile", str(certs.ca)],
        input=request_line("s2").encode() + b"\n", capture_output=True, timeout=HANG,
    )
    assert done.returncode != 0
    assert b"alert certificate required" in done.stderr, done.stderr[-500:]
    assert done.stdout == b""


def test_socat_tls_pipeline_ends_by_itself_with_every_answer(served: Daemon, certs: Certs):
    """socat sends a close_notify at the end of its input (and no TCP shutdown): that is the
    client's half-close, so the requests still running finish, every event arrives, then the
    server closes and socat ends by itself. (Twisted's TLS took the close_notify for a whole
    close: socat printed nothing and the requests were cancelled.)"""
    slow = go_main('\tfmt.Println("a")\n\ttime.Sleep(700 * time.Millisecond)\n'
                   '\tfmt.Println("b")', imports=("fmt", "time"))
    lines = json.dumps({"id": "p1", "code": slow}) + "\n" + request_line("p2") + "\n"
    started = time.monotonic()
    done = subprocess.run(
        ["socat", "-t", str(HANG), "-",
         f"OPENSSL:127.0.0.1:{served.tls_port},cafile={certs.ca},cert={certs.client},"
         f"key={certs.client_key}"],
        input=lines.encode(), capture_output=True, timeout=HANG)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < HANG / 2  # ended by itself, not by -t
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert {k: v["status"] for k, v in finals(events).items()} == {"p1": "ok", "p2": "ok"}
    assert output(events, "p1") == "a\nb\n"
    assert output(events, "p2") == EXPECTED


def test_tls_end_of_file_without_close_notify_cancels(served: Daemon, certs: Certs):
    """A TCP end of file with no close_notify before it is a cut TLS stream, not an end of
    input: the connection is dropped and its request cancelled, as before."""
    with tls_connect(served.tls_port, certs, certs.client, certs.client_key) as client:
        client.send(json.dumps({"id": "cut", "code": go_main(
            '\tfmt.Println("started")\n\ttime.Sleep(time.Minute)', imports=("fmt", "time"))}))
        assert client.read_event()["output"] == "started\n"
        client.sock.shutdown(socket.SHUT_WR)  # SSLSocket.shutdown: no close_notify
        deadline = time.monotonic() + HANG
        while "request cut " not in served.log():
            assert time.monotonic() < deadline, served.log()[-2000:]
            time.sleep(0.1)
    assert "request cut " in served.log()
    line = next(x for x in served.log().splitlines() if "request cut " in x)
    assert "status=cancelled" in line, line


def test_tls_client_that_closed_after_close_notify_is_found(served: Daemon, certs: Certs):
    """openssl s_client without -ign_eof sends close_notify at the end of its input, shuts
    its socket down and closes it 0.5 s later without reading: after the half-close the
    server probes (through TLS, as over TCP), gets a reset and cancels the request."""
    sleeper = go_main("\ttime.Sleep(time.Hour)", imports=("time",))  # silent: only probes
    line = json.dumps({"id": "gone", "code": sleeper, "limits": {"wall_ms": 60000}})
    started = time.monotonic()
    subprocess.run(
        ["openssl", "s_client", "-no_ign_eof", "-connect", f"127.0.0.1:{served.tls_port}",
         "-CAfile", str(certs.ca), "-cert", str(certs.client), "-key", str(certs.client_key)],
        input=(line + "\n").encode(), capture_output=True, timeout=HANG)
    while "request gone " not in served.log():
        assert time.monotonic() - started < 30, served.log()[-2000:]  # not the 60 s limit
        time.sleep(0.1)
    logged = next(x for x in served.log().splitlines() if "request gone " in x)
    assert "status=cancelled" in logged, logged


def test_idle_tls_connection_is_closed(certs: Certs):
    """--idle-timeout closes a TLS connection too (Twisted's TLS held the close back for the
    connection's registered producer: an idle TLS connection stayed open for ever)."""
    port = free_port()
    d = Daemon(first_driver(), "--idle-timeout=1", listen=[
        f"ssl:{port}:interface=127.0.0.1:privateKey={certs.server_key}:certKey={certs.server}"])
    try:
        d.start()
        wait_port(port)
        with tls_connect(port, certs) as client:
            started = time.monotonic()
            assert client.read_event(HANG) is None  # closed by the server, cleanly
            assert time.monotonic() - started < 10
    finally:
        d.cleanup()


# -- Unix sockets ----------------------------------------------------------------------------

def test_unix_socket_is_owner_and_group_only_by_default(served: Daemon):
    st = os.stat(served.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_uid == os.getuid()


def test_unix_socket_mode_666_only_when_asked(served: Daemon, open_socket: str):
    assert stat.S_IMODE(os.stat(open_socket).st_mode) == 0o666


@pytest.mark.parametrize("tool", ["socat", "nc"])
def test_unix_socket_with_command_line_clients(served: Daemon, open_socket: str, tool: str):
    argv = {
        # -t: after stdin's EOF (sent on as a half-close), wait this long for the answer.
        "socat": ["socat", "-t", str(HANG), "-", f"UNIX-CONNECT:{served.socket_path}"],
        # -N: shut the socket's writing side down at stdin's EOF, then read to the end.
        "nc": ["nc", "-N", "-U", open_socket],
    }[tool]
    done = subprocess.run(argv, input=(request_line(tool) + "\n").encode(),
                          capture_output=True, timeout=HANG)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert finals(events)[tool]["status"] == "ok"
    assert output(events, tool) == EXPECTED


# -- systemd socket activation ---------------------------------------------------------------

class ActivatedDaemon(Daemon):
    """A daemon started as systemd starts a socket-activated service."""

    def __init__(self, driver: str, port: int) -> None:
        super().__init__(driver)
        self.port = port
        at = self.argv.index(f"--listen=unix:{self.socket_path}")
        self.argv[at:at + 1] = ["--listen=systemd:domain=UNIX:index=0",
                                "--listen=systemd:domain=INET:index=1"]
        self.argv = [sys.executable, str(HERE / "listen_fds.py"), f"unix:{self.socket_path}",
                     f"tcp:127.0.0.1:{port}", "--", *self.argv]


def test_systemd_socket_activation_unix_and_inet():
    d = ActivatedDaemon(first_driver(), free_port())
    try:
        d.start()  # returns at once: the socket exists before the daemon does anything
        inode = os.stat(d.socket_path).st_ino
        events = d.run(request_line("sd-unix"))  # queued in the backlog until the daemon runs
        assert finals(events)["sd-unix"]["status"] == "ok"
        assert output(events, "sd-unix") == EXPECTED
        assert os.stat(d.socket_path).st_ino == inode  # adopted, not made anew
        # Served as systemd made it: Twisted's adopted port chmods the path to 0666
        # (twisted/twisted#10261; EROFS under ProtectSystem=strict); sandboxd's does not.
        assert stat.S_IMODE(os.stat(d.socket_path).st_mode) == 0o660
        with Client(sock=socket.create_connection(("127.0.0.1", d.port), timeout=HANG)) as c:
            c.send(request_line("sd-inet"))
            events = c.read_until_done("sd-inet")
        assert output(events, "sd-inet") == EXPECTED
    finally:
        d.cleanup()


def test_systemd_listen_without_inherited_socket_fails_clearly():
    from tests.harness import TWISTD

    done = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "sandboxd",
         "--listen=systemd:domain=UNIX:index=0", "--state-dir=/nonexistent/never-made"],
        capture_output=True, timeout=HANG, env={k: v for k, v in os.environ.items()
                                                if not k.startswith("LISTEN_")},
    )
    assert done.returncode != 0
    text = (done.stdout + done.stderr).decode()
    assert "no such descriptor was inherited" in text and "Traceback" not in text
    assert not Path("/nonexistent/never-made").exists()
