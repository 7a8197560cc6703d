"""``--cgroups=isolate``: isolate's own ``--cg`` (isolate 2.x needs cgroup v2), in the guest of
``CGROUP2_ISOLATE=1 make test-cgroup2``, with ``cg_root`` a delegated cgroup guest.sh made."""

from __future__ import annotations

import signal

from tests.harness import Daemon, finals, go_main, output

HELLO = go_main('\tfmt.Println("hello")')
HOG = go_main('\tb := make([][]byte, 0)\n\tfor {\n\t\tb = append(b, make([]byte, 1<<20))'
              '\n\t\tfor i := range b[len(b)-1] {\n\t\t\tb[len(b)-1][i] = 1\n\t\t}\n\t}'
              '\n\tfmt.Println(len(b))')


def test_isolate_cg_runs_and_reports_memory_limit():
    d = Daemon("isolate", "--cgroups=isolate").start()
    try:
        assert "isolate --cg" in d.log(), d.log()
        events = d.run({"id": "hi", "code": HELLO})
        assert output(events, "hi") == "hello\n", events
        hog = finals(d.run({"id": "oom", "code": HOG, "limits": {"memory_mb": 64}}))["oom"]
        assert hog["status"] == "memory_limit", hog
        assert d.stop() in (0, -signal.SIGTERM)
    finally:
        d.cleanup()
