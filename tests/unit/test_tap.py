"""``twistd sandboxd --help`` lists every option with its default (issue 2)."""

from __future__ import annotations

import re

import pytest
from twisted.python import usage

from sandboxd.service.tap import DEFAULT_LISTEN, Options


def help_entries() -> dict[str, str]:
    """Option name -> its help text, joined across wrapped lines."""
    entries: dict[str, str] = {}
    name = None
    for line in str(Options()).splitlines():
        m = re.match(r"\s+(?:-\w, )?--([\w-]+)=?\s*(.*)", line)
        if m:
            name = m.group(1)
            entries[name] = m.group(2)
        elif name and line.startswith(" " * 20):
            entries[name] += " " + line.strip()
        else:
            name = None
    return entries


def test_every_option_says_its_default():
    entries = help_entries()
    assert {"listen", "sandbox", "boxes", "state-dir", "go", "session-idle", "session-max-age",
            "cleanup-period"} <= set(entries)
    missing = [n for n, text in entries.items()
               if n not in ("help", "version") and "[default:" not in text]
    assert missing == []
    ragged = [n for n, text in entries.items() if "   " in text]
    assert ragged == []  # no docstring indentation in the middle of a sentence


def test_defaults_of_the_issue():
    opts = Options()
    opts.parseOptions([])
    assert opts["listen"] == [DEFAULT_LISTEN] == ["tcp:8080:interface=127.0.0.1"]
    assert opts["sandbox"] == "auto" and opts["state-dir"] == "/var/lib/sandboxd"
    assert (opts["session-idle"], opts["session-max-age"], opts["cleanup-period"]) == (
        1200.0, 1800.0, 300.0)


def test_listen_is_repeatable_and_replaces_the_default():
    opts = Options()
    opts.parseOptions(["--listen", "tcp:9000", "--listen", "unix:/tmp/x.sock"])
    assert opts["listen"] == ["tcp:9000", "unix:/tmp/x.sock"]


@pytest.mark.parametrize("argv", [["--sandbox", "docker"], ["--boxes", "0"],
                                  ["--session-idle", "-1"], ["--limit", "run.wall_ms"],
                                  ["--limit", "run.speed=1"], ["--limit", "run.wall_ms=x"]])
def test_bad_options_are_usage_errors(argv):
    with pytest.raises((usage.UsageError, ValueError)):
        Options().parseOptions(argv)


def test_limit_options_change_the_policy():
    opts = Options()
    opts.parseOptions(["--max-limit", "run.wall_ms=3000", "--limit", "run.wall_ms=2000"])
    policy = opts["policy"]
    assert policy.defaults.run.wall_ms == 2000 and policy.maximums.run.wall_ms == 3000
    with pytest.raises(usage.UsageError, match=r"run.wall_ms=400000 is above its maximum"):
        Options().parseOptions(["--limit", "run.wall_ms=400000"])
    opts = Options()
    opts.parseOptions(["--limit", "run.wall_ms=400000", "--max-limit", "run.wall_ms=400000"])
    assert opts["policy"].defaults.run.wall_ms == 400000


def test_options_are_read_once_into_settings():
    from pathlib import Path

    from sandboxd.service.settings import Settings

    opts = Options()
    opts.parseOptions(["--boxes", "3", "--held-builds", "off", "--max-pending-input-mb", "7",
                       "--state-dir", "/tmp/s", "--max-queue", "9", "--shutdown-grace", "2"])
    s = Settings.from_options(opts)
    assert (s.boxes, s.hold_builds, s.max_pending_input, s.max_queue) == (3, False, 7 << 20, 9)
    assert s.state_dir == Path("/tmp/s") and s.shutdown_grace == 2 and s.policy is opts["policy"]
    assert s.max_line_bytes == opts["max-line-bytes"] and s.sandbox == "auto"
