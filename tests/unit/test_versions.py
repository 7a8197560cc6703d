"""A run on several toolchains, its logic alone: the ``go`` list's checks, the final event's rule
(``sandboxd.jobs.versions.final``), and the pool's exchange of a used box for a clean one."""

from __future__ import annotations

import json

import pytest

from sandboxd.jobs.versions import Part, final, not_run
from sandboxd.limits import LimitPolicy
from sandboxd.status import Phase, Status
from sandboxd.wire.events import final_event, output_event
from sandboxd.wire.request import MAX_TOOLCHAINS, BadRequest, parse_line
from tests.unit.test_pool import got, make_pool

TOOLCHAINS = ("default", "old", "a", "b", "c")


def parse(obj: dict):
    return parse_line(json.dumps(obj).encode(), LimitPolicy(), toolchains=TOOLCHAINS)


def refused(obj: dict) -> str:
    with pytest.raises(BadRequest) as e:
        parse(obj)
    assert e.value.request_id == obj.get("id")
    return e.value.message


def test_a_list_names_the_toolchains_in_order():
    req = parse({"id": "r", "code": "x", "go": ["old", "default"], "stdin": "in"})
    assert req.toolchains == ("old", "default") and req.go is None and req.stdin == b"in"
    assert parse({"code": "x", "go": ["old"]}).toolchains == ("old",)
    assert parse({"code": "x", "go": "old"}).toolchains == ()


@pytest.mark.parametrize(("go", "words"), [
    ([], "1 to 4 toolchains, not 0"),
    (["default", "old", "a", "b", "c"], f"1 to {MAX_TOOLCHAINS} toolchains, not 5"),
    (["old", "old"], "toolchain 'old' is named twice"),
    (["old", "go0.1"], "unknown Go toolchain 'go0.1'"),
    (["old", 7], "unknown Go toolchain 7"),
    (["old", ["default"]], "unknown Go toolchain ['default']"),
])
def test_bad_lists(go, words):
    assert words in refused({"id": "r", "code": "x", "go": go})


def test_a_list_is_for_run_alone_and_not_with_a_session_or_interactive_stdin():
    assert "a list is for 'run'" in refused({"id": "f", "type": "fmt", "code": "x",
                                             "go": ["old"]})
    assert "a list is for 'run'" in refused({"id": "v", "type": "vet", "code": "x",
                                             "go": ["old"]})
    assert "'session_id' cannot" in refused({"id": "s", "code": "x", "go": ["old"],
                                             "session_id": "s1"})
    assert "'interactive' cannot" in refused({"id": "i", "code": "x", "go": ["old"],
                                              "interactive": True})


def part(name: str, status: Status, out: str = "", phase: Phase = Phase.RUN,
         **fields) -> Part:
    p = Part(name, f"go-{name}")
    if out:
        p.feed(output_event("r", "stdout", phase, out))
    p.final = final_event("r", status, f"{status} message", phase,
                          output_bytes=len(out), **fields)
    return p


def test_ok_when_every_toolchain_gave_ok_and_the_outputs_are_compared():
    same = final("r", [part("old", Status.OK, "x\n"), part("new", Status.OK, "x\n",
                                                            wall_ms=5)], False, "n")
    assert (same["status"], same["outputs_differ"], same["node"]) == ("ok", False, "n")
    assert same["message"] == "ok on every toolchain (old, new)"
    assert same["wall_ms"] == 5 and same["output_bytes"] == 4  # the last part's; the sum
    assert same["go"] == ["go-old", "go-new"]
    differ = final("r", [part("old", Status.OK, "x\n"), part("new", Status.OK, "y\n")],
                   False, None)
    assert differ["outputs_differ"] is True and "node" not in differ
    assert [r["go"] for r in differ["results"]] == ["old", "new"]


def test_the_first_toolchain_that_did_not_give_ok_decides():
    event = final("r", [
        part("a", Status.OK, "x\n"),
        part("b", Status.COMPILE_ERROR, phase=Phase.BUILD, exit_code=1),
        part("c", Status.RUNTIME_ERROR, exit_code=3),
    ], False, None)
    assert (event["status"], event["phase"], event["exit_code"]) == ("compile_error", "build", 1)
    assert event["message"] == "b (go-b): compile_error message" and event["is_error"]
    assert [r["status"] for r in event["results"]] == ["ok", "compile_error", "runtime_error"]


def test_a_cancelled_request_is_cancelled_and_what_did_not_run_says_so():
    stopped = not_run(Status.CANCELLED, "cancelled by the client")
    late = Part("c", "go-c", final=stopped)
    event = final("r", [part("a", Status.COMPILE_ERROR, phase=Phase.BUILD),
                        part("b", Status.CANCELLED, "t\n"), late], True, None)
    assert (event["status"], event["phase"]) == ("cancelled", "run")
    assert event["message"] == "cancelled message"  # the cancel's own words, unprefixed
    c = event["results"][2]
    assert (c["status"], c["phase"], c["message"]) == (
        "cancelled", "queue", "not run: cancelled by the client")
    assert "stdout_sha256" not in c and "ran" not in c
    assert event["outputs_differ"] is True  # a and b ran, and their outputs differ


def test_exchange_gives_a_clean_box_and_keeps_the_turn():
    pool, driver, clock = make_pool(boxes=1)
    first = got(pool.acquire(None, "me"))
    driver.files[first.number].add("left behind")
    other = pool.acquire(None, "other")  # waits: the one box's turn is taken
    second = pool.exchange(first)
    assert second.number != first.number and driver.files[second.number] == set()
    assert pool.holder[second.number] == "me" and pool.busy == {second.number}
    assert not other.called  # the turn stayed with the request that holds it
    clock.advance(0)
    assert first.number in driver.wiped or first.number in driver.destroyed
    pool.release(second)
    assert got(other) is not None


def test_a_list_is_not_for_judging():
    assert "either 'cases' or 'go as a list'" in refused(
        {"id": "r", "code": "x", "go": ["old", "default"],
         "cases": [{"stdin": "", "expected": ""}]})
