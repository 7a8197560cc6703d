"""Go tests in a playground: when a program's tests run instead of its ``main``, and counting them.

As on the Go Playground, a package with ``Test…``/``Example…`` functions and no ``func main``
runs its tests.  Tests in a file not named ``*_test.go`` are moved to one (``main.go`` becomes
``main_test.go``) so that ``go test -c`` builds them; diagnostics name the file the client sent.
Counts come from ``-test.v`` lines the program prints, so a program can fake them: they are for
display, not for grading.
"""

from __future__ import annotations

import re

FUNC_MAIN = re.compile(rb"^func\s+main\s*\(\s*\)", re.MULTILINE)
# As ``go test`` has it: TestXxx where Xxx does not start with a lower-case letter.
TEST_FUNC = re.compile(rb"^func\s+(Test|Example|Benchmark|Fuzz)(?:[A-Z0-9_]\w*)?\s*\(",
                       re.MULTILINE)
RESULT_LINE = re.compile(rb"^--- (PASS|FAIL|SKIP): ")
RUN_FLAGS = ("-test.v",)


def _root_go(files: dict[str, bytes]) -> list[str]:
    return [n for n in files if "/" not in n and n.endswith(".go")]


def wants_tests(files: dict[str, bytes], forced: bool = False) -> bool:
    """True when the package's tests should run instead of the program."""
    names = _root_go(files)
    has_tests = any(n.endswith("_test.go") or TEST_FUNC.search(files[n]) for n in names)
    if forced:
        return has_tests
    has_main = any(FUNC_MAIN.search(files[n]) for n in names if not n.endswith("_test.go"))
    return has_tests and not has_main


def as_test_package(files: dict[str, bytes]) -> tuple[dict[str, bytes], dict[str, str]]:
    """The files with tests moved into ``*_test.go`` names, and new name → sent name."""
    out: dict[str, bytes] = {}
    renamed: dict[str, str] = {}
    for name, data in files.items():
        if "/" not in name and name.endswith(".go") and not name.endswith("_test.go") \
                and TEST_FUNC.search(data):
            new = name[: -len(".go")] + "_test.go"
            if new not in files:
                out[new] = data
                renamed[new] = name
                continue
        out[name] = data
    return out, renamed


class Counter:
    """Counts top-level ``--- PASS/FAIL/SKIP`` lines of ``go test -v`` output."""

    def __init__(self) -> None:
        self.counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
        self._partial = b""

    def feed(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-256:]
        for line in lines:
            m = RESULT_LINE.match(line)
            if m:
                self.counts[m.group(1).decode()] += 1

    @property
    def failed(self) -> int:
        return self.counts["FAIL"]

    @property
    def passed(self) -> int:
        return self.counts["PASS"]
