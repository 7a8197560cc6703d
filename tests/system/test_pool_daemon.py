"""Box pool behaviour on a real daemon: session expiry removes files, one box means strict FIFO."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.harness import HANG, Daemon, finals, go_main, output

IDLE_S = 3  # long enough for write and read to follow each other on a loaded machine


@pytest.fixture(scope="module")
def small_daemon(driver: str):
    d = Daemon(driver, f"--session-idle={IDLE_S}", "--cleanup-period=0.5", boxes=1).start()
    try:
        yield d
    finally:
        d.cleanup()


WRITE = go_main('\tos.WriteFile("/box/expiring.txt", []byte("kept"), 0o600)',
                imports=("os",))
READ = go_main('\tb, err := os.ReadFile("/box/expiring.txt")\n'
               '\tfmt.Printf("%s|%v\\n", b, err != nil)', imports=("fmt", "os"))


def session_files(d: Daemon) -> list[str]:
    return [str(p) for p in (d.state_dir / "boxes").glob("*/expiring.txt")]


def test_an_idle_session_is_removed_with_its_files(small_daemon):
    d = small_daemon
    assert finals(d.run({"code": WRITE, "session_id": "exp", "id": "w"}))["w"]["status"] == "ok"
    assert output(d.run({"code": READ, "session_id": "exp", "id": "r"}), "r") == "kept|false\n"
    assert len(session_files(d)) == 1  # the box's files, on the host
    deadline = time.monotonic() + HANG
    while session_files(d):
        assert time.monotonic() < deadline, "the idle session was never removed"
        time.sleep(0.2)
    # The session id starts afresh, in an empty box.
    assert output(d.run({"code": READ, "session_id": "exp", "id": "r2"}), "r2") == "|true\n"
    assert "session exp ended" in d.log()


def test_one_box_serves_requests_one_at_a_time_in_arrival_order(small_daemon):
    # Different sources (no shared build); each prints when it starts and when it ends.
    requests = [
        {"id": f"f{i}", "code": go_main(
            f'\tfmt.Println("start {i}")\n\ttime.Sleep(300 * time.Millisecond)\n'
            f'\tfmt.Println("end {i}")', imports=("fmt", "time"))}
        for i in range(3)
    ]
    events = small_daemon.run(*requests)
    done = finals(events)
    assert all(done[f"f{i}"]["status"] == "ok" for i in range(3))
    order = [e["id"] for e in events if e.get("done")]
    assert order == ["f0", "f1", "f2"]
    spans = []
    for i in range(3):
        stamps = [int(e["timestamp"]) for e in events
                  if e["id"] == f"f{i}" and not e.get("done")]
        assert output(events, f"f{i}") == f"start {i}\nend {i}\n"
        spans.append((min(stamps), max(stamps)))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two runs overlapped on one box: {spans}"
