"""Box pool bookkeeping on a fake clock and a fake driver: who waits, who gets which box, expiry."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from sandboxd.boxes.box import Box
from sandboxd.boxes.pool import BoxPool, PoolSettings, QueueFull

MIN = 60


class FakeDriver:
    """Keeps each box's "files" in memory; can be told to fail destroying a box."""

    def __init__(self) -> None:
        self.files: dict[int, set[str]] = {}
        self.created: list[int] = []
        self.wiped: list[int] = []
        self.destroyed: list[int] = []
        self.fail_destroy: set[int] = set()
        self.swept = 0

    def sweep(self) -> None:
        self.swept += 1

    def uid_for(self, number: int) -> int:
        return 70000 + number

    def gid_for(self, number: int) -> int:
        return 80000 + number

    def workspace_for(self, number: int) -> Path:
        return Path("/nonexistent/boxes") / str(number)

    def create_box(self, box: Box, disk_mb: int) -> None:
        assert box.number not in self.files, f"box {box.number} created twice"
        self.files[box.number] = set()
        self.created.append(box.number)

    def wipe_box(self, box: Box, disk_mb: int) -> None:
        self.files[box.number] = set()
        self.wiped.append(box.number)

    def destroy_box(self, box: Box) -> None:
        if box.number in self.fail_destroy:
            raise OSError("device busy")
        self.files.pop(box.number, None)
        self.destroyed.append(box.number)


def advance(clock: Clock, seconds: float) -> None:
    """Move the clock a second at a time, so each loop call sees its own time."""
    for _ in range(int(seconds)):
        clock.advance(1)


def make_pool(**settings) -> tuple[BoxPool, FakeDriver, Clock]:
    clock = Clock()
    driver = FakeDriver()
    pool = BoxPool(driver, PoolSettings(**{"boxes": 2, **settings}), clock, now=clock.seconds)
    pool.start()
    return pool, driver, clock


def got(d: defer.Deferred) -> Box:
    """The box a fired acquire gave (fails if it has not fired)."""
    result: list = []
    d.addBoth(lambda r: (result.append(r), r)[1])
    assert result, "the request is still waiting"
    assert isinstance(result[0], Box), result[0]
    return result[0]


def waiting(d: defer.Deferred) -> bool:
    return not d.called


@pytest.fixture
def log_events():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def failures(events: list[dict]) -> list[dict]:
    return [e for e in events if "log_failure" in e]


# -- start and stop ----------------------------------------------------------------------


def test_start_sweeps_and_prepares_one_ready_box_per_slot():
    pool, driver, _ = make_pool(boxes=3)
    assert driver.swept == 1 and len(pool.ready) == 3 and len(driver.created) == 3


def test_box_numbers_and_uids_start_at_first_box():
    pool, _, _ = make_pool(boxes=2, first_box=32)
    assert sorted(b.number for b in pool.ready) == [32, 33]
    assert {b.uid for b in pool.ready} == {70032, 70033}
    # The gid is the driver's too (isolate's subgid range need not match its subuid range).
    assert {b.gid for b in pool.ready} == {80032, 80033}


def test_stop_destroys_every_box_and_the_loop():
    pool, driver, _ = make_pool()
    pool.release(got(pool.acquire("s")))
    pool.stop()
    assert driver.files == {} and not pool._cleanup.running


def test_stop_destroys_boxes_requests_still_hold_and_their_late_release_is_harmless():
    pool, driver, clock = make_pool(boxes=2)
    anon, session = got(pool.acquire(None)), got(pool.acquire("s"))
    pool.stop()  # neither request ended: their boxes go all the same, each once
    assert driver.files == {}
    assert sorted(driver.destroyed) == sorted([anon.number, session.number, *[
        n for n in driver.created if n not in (anon.number, session.number)]])
    before = list(driver.destroyed)
    pool.release(anon)
    pool.release(session)
    clock.advance(1)
    assert driver.destroyed == before and pool.running == 0


# -- waiting -----------------------------------------------------------------------------


def test_requests_wait_first_in_first_out():
    pool, _, _ = make_pool(boxes=1)
    first = got(pool.acquire(None))
    order: list[str] = []
    ds = {}
    for name in "bcd":
        ds[name] = pool.acquire(None)
        ds[name].addCallback(lambda box, n=name: (order.append(n), box)[1])
    assert order == [] and pool.waiting == 3
    pool.release(first)
    assert order == ["b"]
    pool.release(got(ds["b"]))
    pool.release(got(ds["c"]))
    assert order == ["b", "c", "d"] and pool.waiting == 0


def test_one_request_per_box_and_no_more_than_boxes_at_once():
    pool, _, clock = make_pool(boxes=2)
    ds = [pool.acquire(None) for _ in range(5)]
    seen = 0
    while ds:
        running = [d for d in ds if d.called]
        numbers = {got(d).number for d in running}
        assert len(running) == min(2, len(ds)) == len(numbers) == pool.running
        seen += 1
        ds.remove(running[0])
        pool.release(got(running[0]))
        clock.advance(0)
    assert seen == 5 and pool.running == 0


def test_max_queue_refuses_with_queue_full_and_frees_up_again():
    pool, _, _ = make_pool(boxes=1, max_queue=2)
    first = got(pool.acquire(None))
    b, c = pool.acquire(None), pool.acquire(None)
    errors: list = []
    pool.acquire(None).addErrback(errors.append)
    assert errors and errors[0].check(QueueFull)
    assert "the queue is full (2 waiting)" in str(errors[0].value)
    assert waiting(b) and waiting(c)
    pool.release(first)
    assert got(b) and pool.waiting == 1
    assert waiting(pool.acquire(None))  # room again


def test_queue_full_is_a_failure_of_the_deferred():
    pool, _, _ = make_pool(boxes=1, max_queue=1)
    got(pool.acquire(None))
    pool.acquire(None)
    errors: list = []
    pool.acquire(None).addErrback(errors.append)
    assert len(errors) == 1 and errors[0].check(QueueFull)


def test_cancel_while_waiting_gives_up_the_place():
    pool, _, _ = make_pool(boxes=1)
    first = got(pool.acquire(None))
    cancelled = pool.acquire(None)
    later = pool.acquire(None)
    errors: list = []
    cancelled.addErrback(errors.append)
    cancelled.cancel()
    assert errors and errors[0].check(defer.CancelledError)
    assert pool.waiting == 1
    pool.release(first)
    assert got(later)  # the cancelled request did not take the box
    assert pool.running == 1


def test_cancel_while_waiting_for_the_own_session():
    pool, _, _ = make_pool(boxes=2)
    first = got(pool.acquire("s"))
    second = pool.acquire("s")
    second.addErrback(lambda f: f.trap(defer.CancelledError))
    second.cancel()
    assert pool.waiting == 0
    pool.release(first)
    again = got(pool.acquire("s"))
    assert again is first
    pool.release(again)
    assert pool.running == 0 and pool.slots.tokens == 2


def test_a_session_request_cancelled_while_waiting_for_a_slot_leaves_no_lock_behind():
    pool, _, _ = make_pool(boxes=1)
    first = got(pool.acquire(None))
    waiter = pool.acquire("s")
    waiter.addErrback(lambda f: f.trap(defer.CancelledError))
    waiter.cancel()
    assert pool.session_locks == {} and pool.waiting == 0
    pool.release(first)
    pool.release(got(pool.acquire("s")))
    assert pool.session_locks == {}


# -- sessions ----------------------------------------------------------------------------


def test_a_session_gets_its_own_box_back_with_its_files():
    pool, driver, clock = make_pool()
    box = got(pool.acquire("alice"))
    driver.files[box.number].add("note.txt")
    pool.release(box)
    clock.advance(0)
    again = got(pool.acquire("alice"))
    assert again is box and driver.files[box.number] == {"note.txt"}
    assert box.number not in driver.wiped


def test_sessions_and_anonymous_requests_never_share_a_box():
    pool, _, _ = make_pool(boxes=3)
    a, b, anon = got(pool.acquire("a")), got(pool.acquire("b")), got(pool.acquire(None))
    assert len({a.number, b.number, anon.number}) == 3
    assert len({a.uid, b.uid, anon.uid}) == 3
    assert a.session_id == "a" and anon.session_id is None


def test_requests_of_one_session_take_turns_even_with_free_boxes():
    pool, _, _ = make_pool(boxes=2)
    first = got(pool.acquire("s"))
    second = pool.acquire("s")
    assert waiting(second)
    other = got(pool.acquire(None))  # the free box is not held for the session
    pool.release(other)
    assert waiting(second)
    pool.release(first)
    assert got(second) is first


def test_too_many_sessions_is_queue_full_until_one_expires():
    pool, _, clock = make_pool(max_sessions=1)
    pool.release(got(pool.acquire("a")))
    errors: list = []
    pool.acquire("b").addErrback(errors.append)
    assert errors and errors[0].check(QueueFull)
    assert "too many live sessions" in str(errors[0].value)
    assert got(pool.acquire("a"))  # the live session itself still works
    pool.release(pool.sessions["a"])
    clock.advance(21 * MIN)  # idle past its time (the loop may not have run yet)
    assert got(pool.acquire("b")).session_id == "b"


def test_new_sessions_still_waiting_count_against_max_sessions():
    pool, _, _ = make_pool(boxes=1, max_sessions=2)
    busy = got(pool.acquire(None))
    first, second = pool.acquire("a"), pool.acquire("b")  # both wait: no box is free
    errors: list = []
    pool.acquire("c").addErrback(errors.append)
    assert errors and errors[0].check(QueueFull)
    assert waiting(pool.acquire("a"))  # a session already counted is not refused
    pool.release(busy)
    pool.release(got(first))
    pool.release(got(second))
    assert len(pool.sessions) == 2


# -- anonymous boxes ---------------------------------------------------------------------


def test_anonymous_box_is_wiped_after_use_off_the_request_path():
    pool, driver, clock = make_pool(boxes=1)
    box = got(pool.acquire(None))
    driver.files[box.number].add("left.txt")
    pool.release(box)
    assert box.number not in driver.wiped  # not on the releasing request's path
    clock.advance(0)
    assert driver.wiped == [box.number] and driver.files[box.number] == set()
    assert pool.ready == [box]
    again = got(pool.acquire(None))
    assert driver.files[again.number] == set()


def test_a_waiting_request_never_gets_an_unwiped_box():
    pool, driver, clock = make_pool(boxes=1)
    box = got(pool.acquire(None))
    driver.files[box.number].add("left.txt")
    nxt = pool.acquire(None)
    pool.release(box)
    other = got(nxt)
    assert other is not box and driver.files[other.number] == set()
    clock.advance(0)
    assert driver.files.get(box.number, set()) == set()  # wiped, or destroyed as surplus


def test_a_waiting_request_gets_a_box_made_ahead_not_on_its_path():
    pool, driver, clock = make_pool(boxes=1)
    box = got(pool.acquire(None))
    nxt = pool.acquire(None)
    clock.advance(0)  # while the first request runs, a spare box is made ready
    assert len(pool.ready) == 1
    spare = pool.ready[0]
    made = set(driver.files)
    pool.release(box)
    assert got(nxt) is spare and set(driver.files) == made  # nothing made on its path
    clock.advance(0)
    assert len(pool.ready) == 1 and all(driver.files[b.number] == set() for b in pool.ready)


def test_surplus_anonymous_boxes_are_destroyed_not_hoarded():
    pool, driver, clock = make_pool(boxes=1)
    box = got(pool.acquire(None))
    nxt = pool.acquire(None)
    pool.release(box)
    pool.release(got(nxt))
    clock.advance(0)
    assert len(pool.ready) == 1 and len(driver.files) == 1


def test_what_is_prepared_ahead_is_told_of_each_ready_box_and_each_destroyed_one():
    """on_ready for every box that becomes ready, again after each wipe (never a session's);
    on_retire when a box is destroyed, so nothing prepared for it outlives it."""
    clock = Clock()
    driver = FakeDriver()
    pool = BoxPool(driver, PoolSettings(boxes=1), clock, now=clock.seconds)
    log: list[tuple[str, int, int]] = []  # (hook, box, how many wipes the box had)
    pool.on_ready = lambda b: log.append(("ready", b.number, driver.wiped.count(b.number)))
    pool.on_retire = lambda b: log.append(("retire", b.number, driver.wiped.count(b.number)))
    pool.start()
    first = pool.ready[0].number
    assert log == [("ready", first, 0)]
    box = got(pool.acquire(None))
    pool.release(box)
    clock.advance(0)
    assert log[1:] == [("ready", first, 1)]  # ready again once wiped; not retired
    session = got(pool.acquire("s"))
    assert session.number != first and all(n != session.number for _, n, _ in log)
    pool.release(session)
    del log[:]
    pool.stop()
    assert sorted(log) == [("retire", first, 1), ("retire", session.number, 0)]


def test_a_failing_hook_is_logged_and_the_box_still_serves(log_events):
    pool, driver, clock = make_pool(boxes=1)

    def broken(box: Box) -> None:
        raise RuntimeError("no launcher")

    pool.on_ready = pool.on_retire = broken
    box = got(pool.acquire(None))
    pool.release(box)
    clock.advance(0)  # wiped, ready again: on_ready fails
    assert len(failures(log_events)) == 1
    assert got(pool.acquire(None)) is box
    pool.release(box)
    clock.advance(0)
    pool.stop()  # destroyed: on_retire fails, the box is destroyed all the same
    assert len(failures(log_events)) == 3 and box.number not in driver.files


def test_a_box_that_cannot_be_wiped_is_dropped(log_events):
    pool, driver, clock = make_pool(boxes=1)
    box = got(pool.acquire(None))

    def broken(b: Box, disk_mb: int) -> None:
        raise OSError("busy")

    driver.wipe_box = broken  # type: ignore[method-assign]
    pool.release(box)
    clock.advance(0)
    assert box not in pool.ready and box.number in driver.destroyed
    assert any("wiping" in e.get("log_format", "") for e in failures(log_events))
    fresh = got(pool.acquire(None))  # a new box takes its place
    assert fresh is not box and driver.files[fresh.number] == set()


# -- expiry ------------------------------------------------------------------------------


def test_session_expires_after_twenty_idle_minutes_at_the_next_cleanup():
    pool, driver, clock = make_pool()
    box = got(pool.acquire("s"))
    driver.files[box.number].add("f")
    pool.release(box)
    advance(clock, 20 * MIN)  # cleanups at 5, 10, 15, 20 min: idle exactly 20 min is not past
    assert "s" in pool.sessions
    advance(clock, 5 * MIN)
    assert "s" not in pool.sessions and box.number in driver.destroyed
    assert box.number not in driver.files
    fresh = got(pool.acquire("s"))
    assert driver.files[fresh.number] == set()


def test_using_a_session_keeps_it_alive_until_thirty_minutes_in_all():
    pool, driver, clock = make_pool()
    box = got(pool.acquire("s"))
    pool.release(box)
    for _ in range(7):  # a run every 4 minutes: never idle long
        advance(clock, 4 * MIN)
        assert got(pool.acquire("s")) is box
        pool.release(box)
    advance(clock, 2 * MIN)  # 30 min: the cleanup keeps it (exactly 30 is not past)
    assert "s" in pool.sessions
    advance(clock, 5 * MIN)  # 35 min: idle only 7 min, but older than 30 min
    assert "s" not in pool.sessions and box.number in driver.destroyed


def test_a_session_past_its_age_ends_when_its_run_is_released():
    pool, driver, clock = make_pool()
    box = got(pool.acquire("s"))
    pool.release(box)
    advance(clock, 17 * MIN)
    pool.release(got(pool.acquire("s")))
    advance(clock, 14 * MIN)  # 31 min old, idle 14 min: no cleanup has ended it yet
    assert got(pool.acquire("s")) is box
    pool.release(box)
    assert "s" not in pool.sessions and box.number in driver.destroyed


def test_a_session_in_use_when_it_expires_ends_when_its_request_does():
    pool, driver, clock = make_pool()
    box = got(pool.acquire("s"))
    clock.advance(35 * MIN)
    assert box.expired and box.number not in driver.destroyed
    pool.release(box)
    assert box.number in driver.destroyed and "s" not in pool.sessions
    assert got(pool.acquire("s")) is not box


def test_a_session_tells_when_it_expires_if_not_used_again():
    pool, _, clock = make_pool()  # idle 20 min, at most 30 min old
    box = got(pool.acquire("s"))
    assert pool.session_expires_in(box) == 20 * MIN  # idle time, from now
    clock.advance(12 * MIN)
    assert pool.session_expires_in(box) == 18 * MIN  # its maximum age comes first
    pool.release(box)
    clock.advance(18 * MIN)  # kept at least that long (cleanups at 15 and 30 min: not past)
    assert pool.sessions.get("s") is box
    clock.advance(35 * MIN)
    assert "s" not in pool.sessions
    other = got(pool.acquire("t"))
    clock.advance(35 * MIN)  # in use when it expired: it ends with its request
    assert other.expired and pool.session_expires_in(other) == 0


def test_cleanup_runs_every_period():
    pool, _, clock = make_pool(cleanup_period_s=10, session_idle_s=5)
    pool.release(got(pool.acquire("s")))
    clock.advance(9)
    assert "s" in pool.sessions
    clock.advance(1)
    assert "s" not in pool.sessions


def test_a_failing_cleanup_step_is_logged_and_the_rest_still_expire(log_events):
    pool, driver, clock = make_pool(boxes=3)
    boxes = {name: got(pool.acquire(name)) for name in ("a", "b", "c")}
    for box in boxes.values():
        pool.release(box)
    driver.fail_destroy.add(boxes["a"].number)
    boxes["b"].last_used = None  # type: ignore[assignment]  # a step that raises
    clock.advance(25 * MIN)
    assert "c" not in pool.sessions and boxes["c"].number in driver.destroyed
    assert "a" not in pool.sessions  # its box could not be removed, but the session ended
    logged = " ".join(e.get("log_format", "") for e in failures(log_events))
    assert "destroying" in logged and "expiring" in logged
    assert pool._cleanup.running
    boxes["b"].last_used = clock.seconds() - 25 * MIN
    clock.advance(5 * MIN)
    assert "b" not in pool.sessions  # the loop kept running


def test_the_loop_restarts_when_a_whole_cleanup_fails(log_events):
    pool, _, clock = make_pool(cleanup_period_s=10, session_idle_s=5)
    pool.release(got(pool.acquire("s")))
    sessions = pool.sessions

    class Exploding(dict):
        def values(self):
            raise RuntimeError("boom")

    pool.sessions = Exploding(sessions)
    clock.advance(10)
    assert any("loop stopped" in e.get("log_format", "") for e in failures(log_events))
    assert pool._cleanup.running
    pool.sessions = sessions
    clock.advance(10)
    assert "s" not in pool.sessions
