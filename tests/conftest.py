"""Fixtures: a real daemon per test module and driver (bubblewrap always, isolate when there)."""

from __future__ import annotations

import pytest

from tests.harness import DRIVERS, Daemon, driver_missing


@pytest.fixture(scope="module", params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    reason = driver_missing(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


@pytest.fixture(scope="module")
def daemon(driver: str):
    d = Daemon(driver).start()
    try:
        yield d
    finally:
        d.cleanup()
