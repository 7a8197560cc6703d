"""The HTTP face's logic without a daemon: options, the Host rule, the Playground's names."""

from __future__ import annotations

import pytest
from twisted.python import usage

from sandboxd.service.tap import Options
from sandboxd.web.play import events_of, playground_names
from sandboxd.web.site import host_allowed


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_http_options():
    options = parse("--http", "tcp:8081:interface=127.0.0.1", "--http", "unix:/tmp/x.sock",
                    "--http-origin", "https://tools.example:8443/", "--http-origin", "*",
                    "--http-host", "play.example")
    assert options["http"] == ["tcp:8081:interface=127.0.0.1", "unix:/tmp/x.sock"]
    assert options["http-origin"] == ["https://tools.example:8443", "*"]
    assert options["http-host"] == ["play.example"]
    assert parse()["http"] == []  # no HTTP listener unless asked (make run asks)
    for bad in ("tools.example", "ftp://x", "https://x/path", "null"):
        with pytest.raises(usage.UsageError, match="--http-origin"):
            parse("--http-origin", bad)


def test_client_ca_accepts_an_ssl_http_listener(tmp_path):
    with pytest.raises(usage.UsageError, match="needs an ssl: listener"):
        parse("--client-ca", str(tmp_path / "ca.pem"), "--http", "tcp:8081")
    # An ssl: --http listener is one: the CA file itself is what is wrong then.
    with pytest.raises(usage.UsageError, match="cannot read --client-ca"):
        parse("--client-ca", str(tmp_path / "ca.pem"), "--http", "ssl:8443:privateKey=k.pem")


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1", True), ("127.0.0.1:8081", True), ("[::1]:8081", True), ("[::1]", True),
    ("10.1.2.3:80", True), ("localhost", True), ("localhost:8081", True),
    ("LOCALHOST.", True), ("app.localhost:1", True), ("play.example", True),
    ("evil.example", False), ("evil.example:8081", False), ("127.0.0.1.evil.example", False),
    ("localhost.evil.example", False), ("", False),
])
def test_host_rule(host, allowed):
    assert host_allowed(host, ["play.example"]) is allowed


def test_playground_names():
    assert playground_names("main.go:4:20: undefined: testing\n", testing=True) == (
        "./prog_test.go:4:20: undefined: testing\n")
    assert playground_names("main.go:3:34: x\nlib/a.go:1:2: y\n") == (
        "./prog.go:3:34: x\n./lib/a.go:1:2: y\n")
    assert playground_names("main.go:2:11: expected", dot_slash=False) == "prog.go:2:11: expected"


def test_events_merge_and_delay():
    run = [
        {"id": "r", "stream": "stdout", "phase": "run", "output": "a", "timestamp": "1000"},
        {"id": "r", "stream": "stdout", "phase": "run", "output": "b", "timestamp": "1000"},
        {"id": "r", "stream": "stderr", "phase": "run", "output": "c", "timestamp": "1000"},
        {"id": "r", "stream": "stderr", "phase": "run", "output": "d", "timestamp": "2000"},
        {"id": "r", "done": True, "status": "ok", "wall_ms": 1500, "timestamp": "2400"},
    ]

    class Collected:
        events = run
        final = run[-1]

    assert events_of(Collected()) == [  # type: ignore[arg-type]
        {"Message": "ab", "Kind": "stdout", "Delay": 100_000_000},
        {"Message": "c", "Kind": "stderr", "Delay": 0},
        {"Message": "d", "Kind": "stderr", "Delay": 1_000_000_000},
    ]
