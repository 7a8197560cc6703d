"""Sessions say what they are, on a real daemon: every final event of a session request tells
whether its box was new (``session_new``) and when the session expires if not used again
(``session_expires_at``, Unix ms as a string, like ``timestamp``)."""

from __future__ import annotations

import time

import pytest

from tests.harness import HANG, Daemon, finals, go_main, output

IDLE_S = 3  # long enough for the requests of one step to follow each other on a loaded machine
MAX_AGE_S = 4

# One source for every request: built once, then from the binary cache.
PROGRAM = go_main(
    '\tb, err := os.ReadFile("/box/mark")\n'
    '\tos.WriteFile("/box/mark", []byte("there"), 0o600)\n'
    '\tfmt.Printf("%s|%v\\n", b, err != nil)', imports=("fmt", "os"))


@pytest.fixture(scope="module")
def idle_daemon(driver: str):
    d = Daemon(driver, f"--session-idle={IDLE_S}", "--cleanup-period=0.5", boxes=1).start()
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def aging_daemon(driver: str):
    d = Daemon(driver, "--session-idle=600", f"--session-max-age={MAX_AGE_S}",
               "--cleanup-period=0.5", boxes=1).start()
    try:
        yield d
    finally:
        d.cleanup()


def use(d: Daemon, session: str, request_id: str) -> tuple[dict, str]:
    """One run in ``session``: its final event and what it saw of the session's files."""
    events = d.run({"id": request_id, "code": PROGRAM, "session_id": session})
    final = finals(events)[request_id]
    assert final["status"] == "ok", final
    return final, output(events, request_id)


def expires(final: dict) -> int:
    value = final["session_expires_at"]
    assert isinstance(value, str) and value.isdigit(), value  # as ``timestamp``
    return int(value)


def test_a_session_is_new_then_not_its_expiry_moves_with_use_then_it_is_new_again(idle_daemon):
    d = idle_daemon
    first, seen = use(d, "si", "a")
    assert (first["session_new"], seen) == (True, "|true\n")
    # When its box goes if not used again: its idle time from now.
    assert abs(expires(first) - int(first["timestamp"]) - IDLE_S * 1000) <= 100, first
    time.sleep(1)
    second, seen = use(d, "si", "b")
    assert (second["session_new"], seen) == (False, "there|false\n")
    assert expires(second) >= expires(first) + 900  # used again: it lives longer
    assert abs(expires(second) - int(second["timestamp"]) - IDLE_S * 1000) <= 100
    # Past that time (and the next cleanup, every 0.5 s), the session is gone.
    deadline = time.monotonic() + HANG
    while time.time() * 1000 < expires(second) + 1000:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    third, seen = use(d, "si", "c")
    assert (third["session_new"], seen) == (True, "|true\n")
    assert expires(third) > expires(second)


def test_a_session_does_not_outlive_its_maximum_age(aging_daemon):
    d = aging_daemon
    first, _ = use(d, "sa", "a")
    assert first["session_new"] is True
    # Within its maximum age from its start, not 600 s of idle time.
    assert 0 < expires(first) - int(first["timestamp"]) <= MAX_AGE_S * 1000, first
    time.sleep(0.5)
    second, _ = use(d, "sa", "b")
    assert second["session_new"] is False
    assert abs(expires(second) - expires(first)) <= 100  # use does not move it: its age counts
    while time.time() * 1000 < expires(second) + 1000:
        time.sleep(0.2)
    third, seen = use(d, "sa", "c")
    assert (third["session_new"], seen) == (True, "|true\n")


def test_no_expiry_without_a_session(idle_daemon):
    final = finals(idle_daemon.run({"id": "n", "code": PROGRAM}))["n"]
    assert "session_expires_at" not in final and "session_new" not in final
