"""SingleFlight's contract, with fake work (Deferreds fired by hand): who leads, who follows,
what is shared, that followers lead one at a time without replacing each other, and that every
wait can be cancelled."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from sandboxd.jobs.singleflight import SingleFlight


class Work:
    """A fake piece of work: records that it ran; its Deferred is fired by the test."""

    def __init__(self, log: list[str], name: str, raise_now: Exception | None = None,
                 value_now: Any = None) -> None:
        self.log, self.name = log, name
        self.raise_now, self.value_now = raise_now, value_now
        self.d: defer.Deferred | None = None
        self.cancelled = False

    def __call__(self) -> Any:
        self.log.append(self.name)
        if self.raise_now is not None:
            raise self.raise_now
        if self.value_now is not None:
            return self.value_now

        def cancel(d: defer.Deferred) -> None:
            self.cancelled = True

        self.d = defer.Deferred(cancel)
        return self.d


def outcome(d: defer.Deferred) -> list[Any]:
    got: list[Any] = []
    d.addBoth(got.append)
    return got


def good(value: str) -> bool:
    return value.startswith("ok")


def test_first_leads_others_follow_and_share_a_shareable_value():
    sf: SingleFlight[str] = SingleFlight()
    ran: list[str] = []
    a, b, c = Work(ran, "a"), Work(ran, "b"), Work(ran, "c")
    da, db, dc = (outcome(sf.run("k", w, good)) for w in (a, b, c))
    assert ran == ["a"] and "k" in sf and sf.followers("k") == 2
    a.d.callback("ok-binary")
    assert da == db == dc == ["ok-binary"]
    assert ran == ["a"]  # nobody else worked
    assert "k" not in sf and len(sf) == 0


def test_different_keys_never_share():
    sf: SingleFlight[str] = SingleFlight()
    ran: list[str] = []
    a, b = Work(ran, "a"), Work(ran, "b")
    da, db = outcome(sf.run("k1", a, good)), outcome(sf.run("k2", b, good))
    assert ran == ["a", "b"]
    a.d.callback("ok-a")
    assert da == ["ok-a"] and db == []
    b.d.callback("ok-b")
    assert db == ["ok-b"] and len(sf) == 0


def test_an_unshareable_value_goes_to_its_leader_only_and_followers_lead_one_at_a_time():
    sf: SingleFlight[str] = SingleFlight()
    ran: list[str] = []
    a, b, c, d = (Work(ran, n) for n in "abcd")
    da, db, dc, dd = (outcome(sf.run("k", w, good)) for w in (a, b, c, d))
    a.d.callback("timeout of a")
    assert da == ["timeout of a"]
    assert db == dc == dd == []
    assert ran == ["a", "b"]  # b leads now; c and d follow b (not a second leader)
    assert sf.followers("k") == 2
    b.d.callback("timeout of b")
    assert db == ["timeout of b"] and ran == ["a", "b", "c"]
    # Someone new meanwhile joins the line, behind d; the entry is the same line, not replaced.
    e = Work(ran, "e")
    de = outcome(sf.run("k", e, good))
    assert ran == ["a", "b", "c"] and sf.followers("k") == 2
    c.d.callback("ok-c")
    assert dc == dd == de == ["ok-c"]
    assert ran == ["a", "b", "c"] and len(sf) == 0


def test_a_failure_is_never_shared():
    sf: SingleFlight[str] = SingleFlight()
    ran: list[str] = []
    a, b = Work(ran, "a"), Work(ran, "b")
    da, db = outcome(sf.run("k", a, good)), outcome(sf.run("k", b, good))
    a.d.errback(KeyError("boom"))
    assert da[0].check(KeyError) and db == [] and ran == ["a", "b"]
    b.d.callback("ok-b")
    assert db == ["ok-b"] and len(sf) == 0


def test_work_that_raises_or_answers_at_once():
    sf: SingleFlight[str] = SingleFlight()
    ran: list[str] = []
    d1 = outcome(sf.run("k", Work(ran, "a", raise_now=ValueError("no")), good))
    assert d1[0].check(ValueError) and len(sf) == 0
    d2 = outcome(sf.run("k", Work(ran, "b", value_now="ok-now"), good))
    assert d2 == ["ok-now"] and len(sf) == 0


def test_followers_whose_own_work_answers_at_once_all_get_an_answer():
    """A promoted follower may answer synchronously (a cache hit): the line goes on."""
    sf: SingleFlight[str] = SingleFlight()
    ran: list[str] = []
    a = Work(ran, "a")
    da = outcome(sf.run("k", a, good))
    rest = [outcome(sf.run("k", Work(ran, f"f{i}", value_now=f"no-{i}"), good))
            for i in range(3)]
    a.d.callback("no-a")
    assert da == ["no-a"] and rest == [["no-0"], ["no-1"], ["no-2"]]
    assert len(sf) == 0


def test_a_waiting_follower_can_be_cancelled_and_its_work_never_runs():
    sf: SingleFlight[str] = SingleFlight()
    ran: list[str] = []
    a, b, c = Work(ran, "a"), Work(ran, "b"), Work(ran, "c")
    da = outcome(sf.run("k", a, good))
    pb = sf.run("k", b, good)
    db = outcome(pb)
    dc = outcome(sf.run("k", c, good))
    pb.cancel()
    assert db[0].check(defer.CancelledError)
    assert sf.followers("k") == 1
    a.d.callback("failed")
    assert ran == ["a", "c"]  # b's work never ran; c leads
    c.d.callback("ok-c")
    assert da == ["failed"] and dc == ["ok-c"] and len(sf) == 0


def test_every_follower_cancelled_then_the_leader_ends():
    sf: SingleFlight[str] = SingleFlight()
    ran: list[str] = []
    a = Work(ran, "a")
    da = outcome(sf.run("k", a, good))
    waits = [sf.run("k", Work(ran, f"f{i}"), good) for i in range(3)]
    for w in waits:
        w.cancel()
    a.d.callback("failed")
    assert da == ["failed"] and ran == ["a"] and len(sf) == 0


def test_cancelling_a_leader_cancels_its_work_and_the_next_leads():
    sf: SingleFlight[str] = SingleFlight()
    ran: list[str] = []
    a, b = Work(ran, "a"), Work(ran, "b")
    pa = sf.run("k", a, good)
    da = outcome(pa)
    db = outcome(sf.run("k", b, good))
    pa.cancel()
    assert a.cancelled and da[0].check(defer.CancelledError)
    assert ran == ["a", "b"] and db == []
    b.d.callback("ok-b")
    assert db == ["ok-b"] and len(sf) == 0


def test_a_predicate_that_raises_shares_nothing():
    sf: SingleFlight[str] = SingleFlight()
    ran: list[str] = []

    def broken(value: str) -> bool:
        raise RuntimeError("bad predicate")

    a, b = Work(ran, "a"), Work(ran, "b")
    da, db = outcome(sf.run("k", a, broken)), outcome(sf.run("k", b, broken))
    a.d.callback("ok-a")
    assert da == ["ok-a"] and db == [] and ran == ["a", "b"]
    b.d.callback("ok-b")
    assert db == ["ok-b"] and len(sf) == 0


def test_many_rounds_leave_nothing_behind():
    sf: SingleFlight[str] = SingleFlight()
    for _ in range(5):
        ran: list[str] = []
        works = [Work(ran, f"w{i}") for i in range(6)]
        got = [outcome(sf.run("k", w, good)) for w in works]
        for w in works[:3]:  # three leaders in turn fail; the fourth succeeds for the rest
            w.d.callback(f"timeout {w.name}")
        works[3].d.callback("ok")
        assert all(len(g) == 1 for g in got)
        assert [g[0] for g in got[3:]] == ["ok"] * 3
        assert len(sf) == 0
