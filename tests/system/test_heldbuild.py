"""Builds held ahead (sandboxd.jobs.heldbuild) in a real daemon: the ready box's launcher waits as
root with nothing of the box running; a new program builds in it; any other request leaves it
for the next; a launcher that died is replaced by the usual way; ``--held-builds=off`` holds
nothing."""

from __future__ import annotations

import os
import random
import signal

import pytest

from tests.harness import Daemon, finals, go_main, output
from tests.hostile import box_uids, processes_of
from tests.system.test_listeners import free_port
from tests.system.test_operations import _processes, scrape, wait_for

SEED = random.randrange(1 << 30)
_serial = iter(range(1 << 30))


def fresh_program() -> tuple[str, str]:
    """A program no cache has seen, and what it prints."""
    n = SEED * 1000 + next(_serial)
    return go_main(f'\tfmt.Println("fresh", {n})'), f"fresh {n}\n"


@pytest.fixture(scope="module")
def daemon(driver: str):
    port = free_port()
    d = Daemon(driver, f"--metrics=tcp:{port}:interface=127.0.0.1", boxes=1).start()
    d.metrics_port = port
    try:
        yield d
    finally:
        d.cleanup()


def launchers(d: Daemon) -> dict[int, int]:
    """pid -> uid of every launcher held ahead by ``d`` (waiting for its line on fd 5), known
    by its cgroups (the sandbox's options, host paths and all, are not on command lines)."""
    from sandboxd.service.assemble import instance_name

    mine = f"/sandboxd-{instance_name(d.state_dir)}/"
    return {pid: uid for pid, (_, uid, cmdline) in _processes().items()
            if "read -r go <&5" in cmdline and mine in cmdline}


def one_launcher(d: Daemon, besides: set[int] = frozenset()) -> int:
    wait_for(lambda: len(set(launchers(d)) - besides) == 1, "a build held ahead")
    (pid,) = set(launchers(d)) - besides
    return pid


def held(d: Daemon) -> dict[str, float]:
    got = scrape(d.metrics_port)
    return {r: got.get(("sandboxd_held_builds_total", (("result", r),)), 0)
            for r in ("used", "abandoned")}


def test_a_ready_box_waits_with_its_launcher_and_nothing_of_the_box(daemon):
    pid = one_launcher(daemon)
    assert launchers(daemon)[pid] == 0  # the daemon's own uid: not yet the box's
    assert processes_of(box_uids(daemon)) == []  # no sandbox, no box process


def test_a_new_program_builds_in_the_build_held_ahead(daemon):
    first = one_launcher(daemon)
    before = held(daemon)
    code, printed = fresh_program()
    events = daemon.run({"id": "new", "code": code})
    final = finals(events)["new"]
    assert final["status"] == "ok" and not final["cached"], final
    assert output(events, "new") == printed
    after = held(daemon)
    assert after["used"] == before["used"] + 1, (before, after)
    assert after["abandoned"] == before["abandoned"], (before, after)
    # The launcher went into the request; the recycled box has a new one for the next.
    assert one_launcher(daemon, besides={first}) != first
    assert first not in launchers(daemon)


def test_a_compile_error_in_the_held_build_is_reported_as_usual(daemon):
    one_launcher(daemon)
    before = held(daemon)
    events = daemon.run({"id": "broken", "code": go_main("\tfmt.Println(nope)")})
    final = finals(events)["broken"]
    assert final["status"] == "compile_error", final
    assert "undefined: nope" in output(events, "broken", "stderr")
    assert held(daemon)["used"] == before["used"] + 1


@pytest.mark.parametrize("request_fields", [
    {"limits": {"build": {"wall_ms": 20000}}},  # other build limits
    {"type": "vet"},
    {"type": "fmt"},
], ids=["build-limits", "vet", "fmt"])
def test_a_request_that_builds_otherwise_leaves_it_for_the_next(daemon, request_fields):
    launcher = one_launcher(daemon)
    before = held(daemon)
    code, printed = fresh_program()
    events = daemon.run({"id": "other", "code": code, **request_fields})
    final = finals(events)["other"]
    assert final["status"] == "ok", final
    if "type" not in request_fields:
        assert output(events, "other") == printed
    assert held(daemon) == before
    # The box was used and wiped, and still has the same launcher, which the next new
    # program builds in.
    assert set(launchers(daemon)) == {launcher}
    code, printed = fresh_program()
    events = daemon.run({"id": "next", "code": code})
    assert output(events, "next") == printed
    assert held(daemon)["used"] == before["used"] + 1


def test_a_cached_program_leaves_it_for_the_next(daemon):
    code, printed = fresh_program()
    assert finals(daemon.run({"id": "c1", "code": code}))["c1"]["status"] == "ok"
    launcher = one_launcher(daemon)
    before = held(daemon)
    events = daemon.run({"id": "c2", "code": code})
    assert finals(events)["c2"]["cached"] is True
    assert output(events, "c2") == printed
    assert held(daemon) == before and set(launchers(daemon)) == {launcher}


def test_a_launcher_that_died_is_replaced_by_the_usual_way(daemon):
    pid = one_launcher(daemon)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pid not in launchers(daemon), "the killed launcher to go")
    before = held(daemon)
    code, printed = fresh_program()
    events = daemon.run({"id": "after-kill", "code": code})
    final = finals(events)["after-kill"]
    assert final["status"] == "ok", final
    assert output(events, "after-kill") == printed
    after = held(daemon)
    assert after["used"] == before["used"] and after["abandoned"] == before["abandoned"] + 1
    one_launcher(daemon)  # and the box is held again for the next request


def test_a_held_build_with_files_it_was_not_given_is_not_used(daemon):
    """Nothing in a box can reach a held build's directories; if anything ever put a file
    there, the build must not run with it."""
    one_launcher(daemon)
    (job_dir,) = (daemon.state_dir / "jobs").glob("ahead-*")
    (job_dir / "out" / "main").write_text("planted")
    before = held(daemon)
    code, printed = fresh_program()
    events = daemon.run({"id": "unplanted", "code": code})
    assert finals(events)["unplanted"]["status"] == "ok"
    assert output(events, "unplanted") == printed
    assert held(daemon) == {"used": before["used"], "abandoned": before["abandoned"] + 1}
    assert "has files it was not given" in daemon.log()


def test_held_builds_off_launches_nothing_ahead(driver):
    d = Daemon(driver, "--held-builds=off", boxes=1).start()
    try:
        code, printed = fresh_program()
        events = d.run({"id": "plain", "code": code})
        assert finals(events)["plain"]["status"] == "ok"
        assert output(events, "plain") == printed
        assert launchers(d) == {}
    finally:
        d.cleanup()
