"""A job's way out, with fakes: whatever fails inside it (its work, the end of its held run,
giving its box back), the request gets exactly one final event and the box is given back or
the failure to do so is logged.  The real-daemon side is in tests/system/test_shared_builds.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from sandboxd.boxes.box import Box
from sandboxd.jobs.job import Job, Runtime
from sandboxd.jobs.metrics import Metrics
from sandboxd.limits import LimitPolicy
from sandboxd.status import Status
from sandboxd.wire.request import parse_line


class FakePool:
    def __init__(self, fail_release: bool = False) -> None:
        self.box = Box(7, 70007, 70007, Path("/nonexistent/7"))
        self.released: list[Box] = []
        self.fail_release = fail_release

    def acquire(self, session_id: str | None, client: str = "", disk_mb: int | None = None
                ) -> defer.Deferred[Box]:
        return defer.succeed(self.box)

    def release(self, box: Box) -> None:
        self.released.append(box)
        if self.fail_release:
            raise RuntimeError("the driver could not wipe the box")

    def session_expires_in(self, box: Box) -> float:
        if self.fail_release:
            raise RuntimeError("the pool's bookkeeping failed")
        return 90.0


def make_job(pool: FakePool, cls: type[Job], **fields: Any
             ) -> tuple[Job, list[dict[str, Any]]]:
    toolchain = SimpleNamespace(name="default", version="go1.27.3")
    rt = Runtime(reactor=None, driver=None, pool=pool, cgroups=None, toolchain=toolchain,
                 binaries=None, jobs_dir=Path("/nonexistent"), metrics=Metrics())
    request = parse_line(json.dumps({"id": "r", "code": "package main\nfunc main() {}\n",
                                     **fields}).encode(), LimitPolicy())
    events: list[dict[str, Any]] = []
    return cls(rt, request, events.append), events


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


class FailingBuild(Job):
    async def _build(self):
        raise KeyError("a bug in the build's bookkeeping")


class Forgetful(Job):
    async def _serve(self) -> None:
        self.box = await self.rt.pool.acquire(None)  # and no final event


class FailingHeldRun(FailingBuild):
    async def _drop_held(self) -> None:
        raise OSError("the held run's directory would not go")


def run(job: Job) -> None:
    got: list[Any] = []
    job.start().addBoth(got.append)
    assert got == [None], got  # the job's own Deferred never fails


def finals(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("done")]


def test_an_exception_in_the_job_is_one_internal_error_and_the_box_goes_back(logged):
    pool = FakePool()
    job, events = make_job(pool, FailingBuild)
    run(job)
    [final] = finals(events)
    assert final["status"] == Status.INTERNAL_ERROR and final["message"] == \
        "internal error: KeyError"
    assert pool.released == [pool.box] and job.box is None
    assert any("log_failure" in e for e in logged)


def test_a_way_out_without_a_final_event_still_gets_one(logged):
    pool = FakePool()
    job, events = make_job(pool, Forgetful)
    run(job)
    [final] = finals(events)
    assert final["status"] == Status.INTERNAL_ERROR and "no outcome" in final["message"]
    assert pool.released == [pool.box]


def test_a_failing_held_run_cleanup_does_not_keep_the_box(logged):
    pool = FakePool()
    job, events = make_job(pool, FailingHeldRun)
    run(job)
    assert len(finals(events)) == 1 and pool.released == [pool.box]


def test_a_failing_release_is_logged_not_lost(logged):
    pool = FakePool(fail_release=True)
    job, events = make_job(pool, FailingBuild)
    run(job)
    assert len(finals(events)) == 1 and pool.released == [pool.box]
    assert any("log_failure" in e and "giving back" in e.get("log_format", "")
               for e in logged), logged


def test_a_session_request_says_when_its_session_expires(logged):
    pool = FakePool()
    pool.box.session_id, pool.box.runs = "s", 2
    job, events = make_job(pool, FailingBuild, session_id="s")
    before = time.time_ns() // 1_000_000
    run(job)
    [final] = finals(events)
    after = time.time_ns() // 1_000_000
    assert final["session_new"] is False
    expires = final["session_expires_at"]
    assert isinstance(expires, str)  # Unix ms as a string, as ``timestamp``
    assert before + 90_000 <= int(expires) <= after + 90_000


def test_a_failing_expiry_costs_only_the_field(logged):
    pool = FakePool(fail_release=True)
    job, events = make_job(pool, FailingBuild, session_id="s")
    run(job)
    [final] = finals(events)
    assert "session_expires_at" not in final and final["session_id"] == "s"
    assert any("the expiry of session" in e.get("log_format", "") for e in logged)
