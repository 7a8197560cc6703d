"""A daemon that a balancer fronts, on its own (no HAProxy needed): it names itself in every
final event and on /healthz, and on SIGTERM with --drain-time it says 503 at once while it
still takes connections and requests, and closes its listeners only after the drain."""

from __future__ import annotations

import signal
import time

from tests.harness import Daemon, finals, go_main
from tests.system.test_listeners import free_port
from tests.system.test_operations import _refused, http_get, wait_for

HELLO = go_main('\tfmt.Println("hello")')
DRAIN_S = 3


def test_node_name_and_drain_before_the_listeners_close():
    port = free_port()
    d = Daemon("bubblewrap", "--node-name=drain-node", f"--drain-time={DRAIN_S}",
               "--shutdown-grace=5", f"--metrics=tcp:{port}:interface=127.0.0.1")
    try:
        d.start()
        wait_for(lambda: _healthz(port)[0] == 200, "the daemon to be healthy", 60)
        assert _healthz(port)[1].rstrip().endswith("(node drain-node)")
        done = finals(d.run({"id": "a", "code": HELLO, "session_id": "s1"}, "not json",
                            {"id": "b", "code": HELLO, "session_id": "s1"}))
        assert (done["a"]["node"], done["a"]["session_new"]) == ("drain-node", True)
        assert (done["b"]["node"], done["b"]["session_new"]) == ("drain-node", False)
        assert done[None]["status"] == "bad_request" and done[None]["node"] == "drain-node"

        assert d.proc is not None
        signalled = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        # At once: 503, so that a balancer sends new work elsewhere ...
        wait_for(lambda: _healthz(port)[0] == 503, "/healthz to say 503", 2)
        assert "shutting down" in _healthz(port)[1]
        # ... while work that still comes is taken and run, on a new connection too.
        late = finals(d.run({"id": "late", "code": HELLO}))["late"]
        assert (late["status"], late["node"]) == ("ok", "drain-node"), late
        assert time.monotonic() - signalled < DRAIN_S, "the drain ended before the check"
        # Then the listeners close, not before the drain time.
        wait_for(lambda: _refused(d.socket_path), "the listener to close", DRAIN_S + 10)
        assert time.monotonic() - signalled >= DRAIN_S - 0.5
        assert d.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        d.cleanup()


def _healthz(port: int) -> tuple[int, str]:
    try:
        return http_get(port, "/healthz")
    except OSError:
        return 0, ""
