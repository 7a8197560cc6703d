"""``sandboxd-client`` names the cause when it cannot talk to sandboxd: the address, which
certificate, which TLS check, what to try. A real daemon with a TLS listener that requires
client certificates, and the real client (certificates made with tests/certs.py).

Every case below used to print ``ConnectionRefusedError: … 111`` without the address,
``ConnectionClosed: the connection to sandboxd ended``, or ``UnlistableError:`` (empty)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.certs import make_certs
from tests.harness import HANG, Daemon
from tests.system.test_listeners import free_port

CLIENT = Path(sys.executable).parent / "sandboxd-client"
HELLO = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hi") }\n'


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("tls")
    certs = make_certs(d)
    (d / "cas").mkdir()
    (d / "cas" / "ca.pem").write_bytes(certs.ca.read_bytes())
    (d / "main.go").write_text(HELLO)
    plain, tls = free_port(), free_port()
    daemon = Daemon("bubblewrap", f"--client-ca={certs.ca}", listen=[
        f"tcp:{plain}:interface=127.0.0.1",
        f"ssl:{tls}:interface=127.0.0.1:privateKey={certs.server_key}:certKey={certs.server}"])
    try:
        daemon.start()
        yield d, certs, plain, tls
    finally:
        daemon.cleanup()


def run(connect: str, main: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLIENT), "--connect", connect, "run", str(main)],
                          capture_output=True, text=True, timeout=HANG,
                          stdin=subprocess.DEVNULL)


def test_the_right_certificates_work(setup):
    d, certs, _plain, tls = setup
    done = run(f"tls:127.0.0.1:{tls}:trustRoots={d}/cas:certificate={certs.client}:"
               f"privateKey={certs.client_key}", d / "main.go")
    assert (done.returncode, done.stdout, done.stderr) == (0, "hi\n", "")


def test_no_daemon_names_the_address(setup):
    d, *_ = setup
    port = free_port()
    for connect, why in ((f"tcp:127.0.0.1:{port}", "connection refused"),
                         (f"unix:{d}/nothing.sock", "no such file or directory")):
        done = run(connect, d / "main.go")
        assert (done.returncode, done.stderr) == (1, (
            f"sandboxd-client: cannot connect to sandboxd at {connect}: {why} (is sandboxd "
            "running and listening there? the address comes from --connect or "
            "$SANDBOXD_CONNECT)\n"))


def test_a_server_certificate_from_another_ca(setup):
    d, certs, _plain, tls = setup
    (d / "other").mkdir(exist_ok=True)
    (d / "other" / "other-ca.pem").write_bytes((d / "other-ca.pem").read_bytes())
    connect = (f"tls:127.0.0.1:{tls}:trustRoots={d}/other:certificate={certs.client}:"
               f"privateKey={certs.client_key}")
    done = run(connect, d / "main.go")
    assert (done.returncode, done.stderr) == (1, (
        f"sandboxd-client: the connection to sandboxd at {connect} ended: the server's "
        "certificate was not accepted (TLS: certificate verify failed): it is not signed by "
        f"a CA in trustRoots={d}/other\n"))


def test_no_client_certificate(setup):
    d, _certs, _plain, tls = setup
    connect = f"tls:127.0.0.1:{tls}:trustRoots={d}/cas"
    done = run(connect, d / "main.go")
    assert (done.returncode, done.stderr) == (1, (
        f"sandboxd-client: the connection to sandboxd at {connect} ended: the server requires "
        "a client certificate (TLS: tlsv13 alert certificate required); add "
        ":certificate=client.pem:privateKey=client.key to --connect\n"))


def test_a_client_certificate_from_another_ca(setup):
    d, certs, _plain, tls = setup
    connect = (f"tls:127.0.0.1:{tls}:trustRoots={d}/cas:certificate={certs.stranger}:"
               f"privateKey={certs.stranger_key}")
    done = run(connect, d / "main.go")
    assert (done.returncode, done.stderr) == (1, (
        f"sandboxd-client: the connection to sandboxd at {connect} ended: the server refused "
        f"our client certificate certificate={certs.stranger} (TLS: tlsv1 alert unknown ca): "
        "it is not signed by the CA the server trusts (its --client-ca)\n"))


def test_tls_aimed_at_a_plain_port_and_plain_at_a_tls_port(setup):
    d, _certs, plain, tls = setup
    connect = f"tls:127.0.0.1:{plain}:trustRoots={d}/cas"
    done = run(connect, d / "main.go")
    assert (done.returncode, done.stderr) == (1, (
        f"sandboxd-client: the connection to sandboxd at {connect} ended: the server did not "
        "answer TLS (TLS: wrong version number); is it a plain port? Try tcp: instead of "
        "tls:\n"))
    connect = f"tcp:127.0.0.1:{tls}"
    done = run(connect, d / "main.go")
    assert (done.returncode, done.stderr) == (1, (
        f"sandboxd-client: the connection to sandboxd at {connect} ended before any answer; "
        "if that port speaks TLS, connect with tls:HOST:PORT:trustRoots=DIR\n"))


def test_trust_roots_given_a_file(setup):
    d, certs, _plain, tls = setup
    connect = f"tls:127.0.0.1:{tls}:trustRoots={certs.ca}"
    done = run(connect, d / "main.go")
    assert (done.returncode, done.stderr) == (1, (
        f"sandboxd-client: --connect {connect}: trustRoots={certs.ca} is a file; it must be a "
        "directory holding the CA certificate(s) as PEM files (mkdir cas && cp ca.pem cas/, "
        "then trustRoots=cas)\n"))
