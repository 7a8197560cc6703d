"""A shutdown waits on the requests' own Deferreds (sandboxd.jobs.submit.all_fired), no
polling: it learns at once when the last one ends, gives up after its time, cancels nothing."""

from __future__ import annotations

from twisted.internet import defer, task

from sandboxd.jobs.submit import all_fired


def test_fires_when_the_last_one_ends():
    clock = task.Clock()
    a, b = defer.Deferred(), defer.Deferred()
    got: list[bool] = []
    all_fired([a, b], 10, clock).addCallback(got.append)
    a.callback(None)
    assert got == []
    b.errback(RuntimeError("a request's failure is still its end"))
    assert got == [True]
    b.addErrback(lambda _: None)
    assert clock.getDelayedCalls() == []  # no timer left behind


def test_gives_up_after_its_time_and_cancels_nothing():
    clock = task.Clock()
    cancelled: list[object] = []
    a: defer.Deferred[None] = defer.Deferred(cancelled.append)
    got: list[bool] = []
    all_fired([a], 10, clock).addCallback(got.append)
    clock.advance(9.9)
    assert got == []
    clock.advance(0.2)
    assert got == [False] and not cancelled and not a.called
    a.callback("its result")  # the request ends later: its own callbacks see its result
    seen: list[object] = []
    a.addCallback(seen.append)
    assert seen == ["its result"]


def test_nothing_in_flight():
    got: list[bool] = []
    all_fired([], 10, task.Clock()).addCallback(got.append)
    assert got == [True]


def test_put_off_clean_ups_are_kept_until_they_ran():
    """A request's directories go a moment after its final event (Runtime.later); a shutdown
    waits on ``put_off`` before it sweeps, so it never finds them as left behind."""
    from pathlib import Path
    from types import SimpleNamespace

    from sandboxd.jobs.runtime import Runtime

    clock = task.Clock()
    rt = Runtime(reactor=clock, driver=None, pool=None, cgroups=None,  # type: ignore[arg-type]
                 toolchain=SimpleNamespace(name="default"), binaries=None,  # type: ignore
                 jobs_dir=Path("/nonexistent"))
    done: list[str] = []
    rt.later(0.01, done.append, "prog")
    got: list[bool] = []
    all_fired(list(rt.put_off), 5, clock).addCallback(got.append)
    assert done == [] and got == [] and len(rt.put_off) == 1
    clock.advance(0.01)
    assert done == ["prog"] and got == [True] and not rt.put_off
