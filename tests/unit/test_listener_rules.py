"""Unit tests of the small rules in sandboxd.service.listeners and sandboxd.service.health
(no daemon)."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from sandboxd.limits import DEFAULT_LIMITS
from sandboxd.service.health import HealthCheck
from sandboxd.service.listeners import (
    ListenerError,
    _clear_stale_unix_socket,
    endpoint_for,
    load_client_ca,
    with_backlog,
    with_safe_defaults,
)


@pytest.mark.parametrize(("given", "made"), [
    ("unix:/run/s.sock", "unix:/run/s.sock:mode=660"),
    ("unix:/run/s.sock:mode=666", "unix:/run/s.sock:mode=666"),
    ("unix:address=/run/s.sock:lockfile=0", "unix:address=/run/s.sock:lockfile=0:mode=660"),
    ("unix:/run/odd\\:mode=1.sock", "unix:/run/odd\\:mode=1.sock:mode=660"),
    ("tcp:8080", "tcp:8080"),
])
def test_unix_sockets_default_to_owner_and_group(given: str, made: str):
    assert with_safe_defaults(given) == made


@pytest.mark.parametrize(("given", "made"), [
    ("unix:/run/s.sock:mode=660", "unix:/run/s.sock:mode=660:backlog=1024"),
    ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=1024"),
    ("ssl:8443:backlog=7", "ssl:8443:backlog=7"),
    ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
])
def test_listeners_get_a_deep_backlog(given: str, made: str):
    assert with_backlog(given) == made


def test_a_lock_naming_our_own_pid_is_stale(tmp_path):
    sock = tmp_path / "s.sock"
    os.symlink(str(os.getpid()), f"{sock}.lock")
    _clear_stale_unix_socket(f"unix:{sock}")
    assert not os.path.lexists(f"{sock}.lock")
    os.symlink("1", f"{sock}.lock")  # another live process's: left for Twisted to refuse
    _clear_stale_unix_socket(f"unix:address={sock}")
    assert os.path.lexists(f"{sock}.lock")


def test_a_socket_nobody_listens_on_is_removed_a_live_one_kept(tmp_path):
    dead, live, plain = tmp_path / "dead.sock", tmp_path / "live.sock", tmp_path / "file"
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        a.bind(str(dead))  # bound, never listening: connections are refused, as after a kill
        b.bind(str(live))
        b.listen(1)
        plain.write_text("not a socket")
        for path in (dead, live, plain):
            _clear_stale_unix_socket(f"unix:{path}:lockfile=0")
        assert not dead.exists()
        assert live.exists() and plain.exists()


def test_bad_strings_and_files_say_what_is_wrong(tmp_path):
    from twisted.internet import reactor

    with pytest.raises(ListenerError, match="cannot listen on nonsense:1"):
        endpoint_for(reactor, "nonsense:1")
    (tmp_path / "empty.pem").write_text("no certificate here\n")
    with pytest.raises(ListenerError, match="holds no PEM certificate"):
        load_client_ca(tmp_path / "empty.pem")
    with pytest.raises(ListenerError, match="cannot read"):
        load_client_ca(tmp_path / "missing.pem")


RUN_LIMITS = DEFAULT_LIMITS.run


def _runtime(spare_box) -> SimpleNamespace:
    return SimpleNamespace(reactor=Clock(),
                           pool=SimpleNamespace(spare_box=spare_box, drop_box=lambda box: None))


def _result(d: defer.Deferred):
    out = []
    d.addBoth(out.append)
    return out[0]


def test_health_fails_when_no_box_can_be_made_and_remembers_it():
    calls = []

    def spare_box():
        calls.append(1)
        raise OSError("no space left on device")

    rt = _runtime(spare_box)
    check = HealthCheck(rt, RUN_LIMITS, lambda: False, ttl_s=5)  # type: ignore[arg-type]
    healthy, why = _result(check.check())
    assert not healthy and "cannot make a box" in why and "no space left" in why
    assert _result(check.check())[0] is False and len(calls) == 1  # kept for ttl_s
    rt.reactor.advance(6)
    _result(check.check())
    assert len(calls) == 2


def test_health_is_503_while_shutting_down_without_probing():
    rt = _runtime(lambda: pytest.fail("no probe while stopping"))
    stopping = True
    healthy, why = _result(HealthCheck(rt, RUN_LIMITS,  # type: ignore[arg-type]
                                       lambda: stopping).check())
    assert not healthy and "shutting down" in why
