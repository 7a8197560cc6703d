"""Fixtures: a real daemon per test module and driver (bubblewrap always, isolate when there)."""

from __future__ import annotations

import os

import pytest

from tests.harness import DRIVERS, Daemon, driver_missing

# tests/guest/ runs only inside the cgroup-v2 guest of `make test-cgroup2` (it starts systemd
# units, installs into /opt): not collected anywhere else, rather than skipped.
if not os.environ.get("SANDBOXD_GUEST"):
    collect_ignore = ["guest"]


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
