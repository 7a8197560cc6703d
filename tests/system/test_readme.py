"""The README's "speak the protocol yourself" sample, run as the README says (``nc -N`` on a
TCP port of a real daemon), arrives in the shape the README shows: three output events and
the final event, with the same fields in the same order and nothing in between."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from tests.harness import DRIVERS, HANG, ROOT, Daemon, driver_missing

README = (ROOT / "README.md").read_text()
# Values that are the same on every run; the others (ids, times, sizes) only keep their type.
STABLE = ("stream", "phase", "output", "exec_err", "is_error", "done", "status", "message",
          "exit_code", "signal", "output_bytes", "session_id")


def readme_request() -> str:
    """The request line the README's printf writes to sample.json."""
    command = next(line for line in README.splitlines()
                   if line.startswith("printf ") and "sample.json" in line)
    argv = shlex.split(command.split(">")[0])
    assert argv[:2] == ["printf", "%s\\n"], argv
    return argv[2] + "\n"


def readme_events() -> list[dict]:
    """The sample output the README shows after "Each prints ..."."""
    after = README[README.index("Each prints three output events"):]
    block = re.search(r"```json\n(.*?)```", after, flags=re.DOTALL)
    assert block is not None
    return [json.loads(line) for line in block.group(1).splitlines()]


def same_shape(got: list[dict], want: list[dict], *, cached: bool) -> None:
    assert [list(e) for e in got] == [list(e) for e in want], got
    for g, w in zip(got, want, strict=True):
        for key, value in w.items():
            if key in STABLE:
                assert g[key] == value, (key, g)
            elif key == "cached":
                assert g[key] is cached
            elif key == "build_ms":
                assert (g[key] is None) if cached else isinstance(g[key], int), g
            elif key == "go":
                assert re.fullmatch(r"go1\.\d+(\.\d+)?", g[key]), g
            else:
                assert type(g[key]) is type(value), (key, g)
        assert re.fullmatch(r"req-\d+", g["id"])


@pytest.fixture
def driver() -> str:
    for name in DRIVERS:
        if driver_missing(name) is None:
            return name
    pytest.fail("no sandbox driver is installed")


def test_readme_sample_through_nc_arrives_as_the_readme_shows(driver: str, tmp_path: Path):
    want = readme_events()
    assert len(want) == 4 and want[-1]["done"]
    sample = tmp_path / "sample.json"
    sample.write_text(readme_request())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    d = Daemon(driver, boxes=1, listen=[f"tcp:{port}:interface=127.0.0.1"]).start()
    try:
        runs = []
        for _ in range(2):  # the first builds the program; the second, as in the README, not
            with sample.open("rb") as stdin:
                done = subprocess.run(["nc", "-N", "127.0.0.1", str(port)], stdin=stdin,
                                      capture_output=True, timeout=HANG)
            assert done.returncode == 0, done.stderr
            runs.append([json.loads(line) for line in done.stdout.splitlines()])
    finally:
        d.cleanup()
    first, second = runs
    # Whether this source was built before depends on the binary cache of this test's
    # daemon only: it starts empty.
    same_shape(first, want, cached=False)
    same_shape(second, want, cached=True)
