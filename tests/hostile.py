"""Helpers for the hostile-program suites: the programs, a benign neighbour, the box processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.harness import HANG, Daemon, finals, go_main, output

PROGRAMS = Path(__file__).resolve().parent / "programs"

BENIGN = go_main('\tfmt.Println("benign 1")\n\ttime.Sleep(500 * time.Millisecond)\n'
                 '\tfmt.Println("benign 2")', imports=("fmt", "time"))
BENIGN_OUTPUT = "benign 1\nbenign 2\n"


def program(name: str, **values: object) -> dict[str, str]:
    """The ``files`` of a program in tests/programs, with ``{{KEY}}`` placeholders filled."""
    files = {}
    for path in sorted(PROGRAMS.glob(f"{name}*.go")):
        if path.stem != name and not path.stem.startswith(f"{name}_"):
            continue
        text = path.read_text()
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", str(value))
        files["main" + path.name.removeprefix(name)] = text
    assert files, f"no program {name}"
    return files


def box_uids(daemon: Daemon) -> set[int]:
    """Every uid a box of this daemon can run as."""
    numbers = range(daemon.first_box, daemon.first_box + 16)
    if daemon.driver == "isolate":
        from sandboxd.sandbox.isolate import box_ids, read_config

        first = box_ids(read_config())[0]
    else:
        first = 100000 + daemon.first_box
    return {first + n for n in numbers}


def processes_of(uids: set[int], exclude: set[int] = frozenset()) -> list[str]:
    """Processes running as one of ``uids``: "pid uid name" each.

    Zombies are dead and hold nothing; a sandbox's init whose parent left first is reparented
    to the machine's init, which may reap it late.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields.get("Uid", "-1 ").split()[0])
        if uid in uids and not fields.get("State", "").strip().startswith("Z"):
            found.append(f"{entry} {uid} {fields.get('Name', '').strip()}")
    return found


def beside(daemon: Daemon, request: dict, timeout: float = HANG,
           exclude: set[int] = frozenset()) -> list[dict]:
    """Run ``request`` while a benign request runs beside it on another connection.

    The benign request is sent once the hostile one has produced its first event (so the two
    overlap); it must finish ``ok`` with its output whole.  Once both are done no process of
    any box may remain (``strict_end`` checks right at the hostile request's final event, with
    nothing beside it).  Returns the hostile request's events.
    """
    request = {"id": "hostile", **request}
    with daemon.connect() as hostile, daemon.connect() as benign:
        hostile.send(request)
        hostile.shutdown_write()
        first = hostile.read_event(timeout)
        benign.send({"code": BENIGN, "id": "benign"})
        benign.shutdown_write()
        if first is not None and not first.get("done"):
            hostile.read_all(timeout)
        events = hostile.events
        done_at = time.monotonic()
        neighbour = benign.read_all(timeout)
        left = processes_of(box_uids(daemon), exclude)
    assert finals(events).get(request["id"]), f"no final event: {events[-3:]}"
    final = finals(neighbour).get("benign")
    assert final is not None and final["status"] == "ok", (final, daemon.log()[-3000:])
    assert output(neighbour, "benign") == BENIGN_OUTPUT
    assert not left, f"box processes outlived the final event: {left}"
    assert time.monotonic() - done_at < timeout
    return events


# The CPU limit of the CPU-spinning tests.  In the cgroup-v2 guest, user-mode Linux charges a
# process for the ticks its host thread waited while the host was busy, so the Go runtime's own
# start could use up 500 ms there before ``main`` printed its first line.
SPIN_CPU_MS = 1500 if os.environ.get("SANDBOXD_GUEST") else 500


def lingering() -> dict:
    """The request of tests/programs/lingering.go: its detached process touches a 512 MiB heap
    (128 MiB in the cgroup-v2 guest, where user-mode Linux takes tens of microseconds a page
    fault: 512 MiB took longer than 10 s there), and it has 30 s of wall time and 60 s of CPU
    time (without a cgroup, user-mode Linux charged those page faults as more than the default
    10 s of CPU time)."""
    heap_mb = 128 if os.environ.get("SANDBOXD_GUEST") else 512
    return {"files": program("lingering", HEAP_MB=heap_mb),
            "limits": {"wall_ms": 30000, "cpu_ms": 60000, "memory_mb": 1024}}


def strict_end(daemon: Daemon, request: dict, exclude: set[int] = frozenset()) -> list[dict]:
    """Run ``request`` alone; no box process may exist once its final event has arrived."""
    request = {"id": "alone", **request}
    with daemon.connect() as client:
        client.send(request)
        client.shutdown_write()
        while True:
            event = client.read_event()
            assert event is not None, "connection closed before the final event"
            if event.get("done"):
                break
        left = processes_of(box_uids(daemon), exclude)
        client.read_all()
    assert not left, f"box processes outlived the final event: {left}"
    return client.events
