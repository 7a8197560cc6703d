"""Limits: a request may lower any limit, never raise one past the operator's maximum."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sandboxd.limits import (
    DEFAULT_LIMITS,
    MAXIMUM_LIMITS,
    MINIMUM_LIMITS,
    PHASE_LIMIT_NAMES,
    LimitError,
    LimitPolicy,
)

POLICY = LimitPolicy()


def test_nothing_asked_means_the_defaults():
    assert POLICY.resolve(None) == DEFAULT_LIMITS
    assert POLICY.resolve({}) == DEFAULT_LIMITS


def test_the_issue_defaults():
    assert DEFAULT_LIMITS.build.wall_ms == 30_000
    assert DEFAULT_LIMITS.run.wall_ms == 10_000
    assert DEFAULT_LIMITS.run.file_size_mb == 10


@pytest.mark.parametrize("name", PHASE_LIMIT_NAMES)
def test_every_run_limit_can_be_lowered_at_the_top_level(name):
    least = getattr(MINIMUM_LIMITS.run, name)
    got = POLICY.resolve({name: least})
    assert getattr(got.run, name) == least
    assert got.build == DEFAULT_LIMITS.build  # top-level names mean the run phase only


@pytest.mark.parametrize("name", PHASE_LIMIT_NAMES)
def test_every_build_limit_can_be_lowered(name):
    least = getattr(MINIMUM_LIMITS.build, name)
    got = POLICY.resolve({"build": {name: least}})
    assert getattr(got.build, name) == least and got.run == DEFAULT_LIMITS.run


def test_raising_up_to_the_maximum_is_allowed_and_past_it_refused():
    most = MAXIMUM_LIMITS.run.wall_ms
    assert POLICY.resolve({"run": {"wall_ms": most}}).run.wall_ms == most
    with pytest.raises(LimitError, match=r"limit run.wall_ms is .* above this server's maximum"):
        POLICY.resolve({"run": {"wall_ms": most + 1}})
    with pytest.raises(LimitError, match=r"limit build\.memory_mb"):
        POLICY.resolve({"build": {"memory_mb": MAXIMUM_LIMITS.build.memory_mb + 1}})


def test_never_above_a_lowered_operator_maximum():
    strict = POLICY.with_setting("run.wall_ms", 2000, maximum=True)
    assert strict.defaults.run.wall_ms == 2000  # the default is clamped to the maximum
    with pytest.raises(LimitError, match="above"):
        strict.resolve({"wall_ms": 2001})
    assert strict.resolve({"wall_ms": 1999}).run.wall_ms == 1999


def test_below_the_least_that_can_work_is_refused():
    with pytest.raises(LimitError, match="below the least that can work"):
        POLICY.resolve({"run": {"processes": MINIMUM_LIMITS.run.processes - 1}})


def test_output_bytes():
    assert POLICY.resolve({"output_bytes": 0}).output_bytes == 0
    assert POLICY.resolve({"output_bytes": 100}).output_bytes == 100
    with pytest.raises(LimitError, match="output_bytes"):
        POLICY.resolve({"output_bytes": MAXIMUM_LIMITS.output_bytes + 1})


def test_phase_and_top_level_together():
    got = POLICY.resolve({"wall_ms": 100, "build": {"wall_ms": 200}, "output_bytes": 5})
    assert (got.run.wall_ms, got.build.wall_ms, got.output_bytes) == (100, 200, 5)


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        ([1], "limits must be an object"),
        ("fast", "limits must be an object"),
        ({"run": 5}, "limits.run must be an object"),
        ({"build": [1]}, "limits.build must be an object"),
        ({"speed": 1}, "unknown limit 'speed'"),
        ({"run": {"speed": 1}}, "unknown limit 'run.speed'"),
        ({"wall_ms": "100"}, "must be a whole number"),
        ({"wall_ms": 100.0}, "must be a whole number"),
        ({"wall_ms": True}, "must be a whole number"),
        ({"wall_ms": None}, "must be a whole number"),
        ({"wall_ms": -1}, "below the least"),
        ({"output_bytes": -1}, "below the least"),
        ({"output_bytes": "1"}, "must be a whole number"),
    ],
)
def test_bad_values(asked, message):
    with pytest.raises(LimitError, match=message):
        POLICY.resolve(asked)


def test_with_setting_changes_one_default_and_leaves_the_rest():
    changed = POLICY.with_setting("run.wall_ms", 5000)
    assert changed.defaults.run == replace(DEFAULT_LIMITS.run, wall_ms=5000)
    assert changed.defaults.build == DEFAULT_LIMITS.build
    assert changed.maximums == MAXIMUM_LIMITS
    assert POLICY.defaults == DEFAULT_LIMITS  # the original is untouched


def test_with_setting_output_bytes_and_build():
    p = POLICY.with_setting("output_bytes", 10).with_setting("build.processes", 100)
    assert p.defaults.output_bytes == 10 and p.defaults.build.processes == 100


def test_with_setting_a_default_above_the_maximum_is_refused_not_lowered():
    """--limit above its maximum: one clear error naming the maximum and the way to raise it
    (it used to be lowered to the maximum without a word)."""
    most = MAXIMUM_LIMITS.run.memory_mb
    with pytest.raises(LimitError) as e:
        POLICY.with_setting("run.memory_mb", most * 2)
    assert str(e.value) == (f"--limit run.memory_mb={most * 2} is above its maximum ({most}); "
                            f"raise the maximum too: --max-limit run.memory_mb={most * 2}")
    with pytest.raises(LimitError, match="above its maximum"):
        POLICY.with_setting("output_bytes", MAXIMUM_LIMITS.output_bytes + 1)
    raised = POLICY.with_setting("run.memory_mb", most * 2, maximum=True)
    assert raised.with_setting("run.memory_mb", most * 2).defaults.run.memory_mb == most * 2
    # A lowered maximum still takes a built-in default above it down with it.
    low = POLICY.with_setting("run.wall_ms", 2000, maximum=True)
    assert low.defaults.run.wall_ms == 2000


@pytest.mark.parametrize("key", ["wall_ms", "run", "run.speed", "test.wall_ms", ""])
def test_with_setting_unknown_names(key):
    with pytest.raises(LimitError, match="unknown limit"):
        POLICY.with_setting(key, 1)


def test_as_dict_lists_every_limit():
    d = DEFAULT_LIMITS.as_dict()
    assert set(d) == {"build", "run", "output_bytes"}
    assert set(d["run"]) == set(PHASE_LIMIT_NAMES) == set(d["build"])


def test_operator_settings_below_the_least_that_can_work_are_refused():
    policy = LimitPolicy()
    for key, value in (("run.wall_ms", -5), ("run.wall_ms", 0), ("build.memory_mb", 1),
                       ("output_bytes", -1)):
        for maximum in (False, True):
            with pytest.raises(LimitError, match="below the least"):
                policy.with_setting(key, value, maximum=maximum)
    assert policy.with_setting("run.wall_ms", 10).defaults.run.wall_ms == 10
