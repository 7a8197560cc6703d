"""Go tests in a playground: when a program's tests run instead of its ``main``, and counting them.

As on the Go Playground, a package with ``Test…``/``Example…``/``Fuzz…`` functions and no ``func
main`` runs its tests; ``Benchmark…`` functions alone do not make it a test package (the
Playground's rule: a benchmark needs ``-test.bench``, which a run does not pass), though a file
holding one is still built as a test file when the tests run.  Names follow ``go test``'s own
rule (cmd/go/internal/load/test.go ``isTest``): the prefix alone, or the prefix and a first rune
that is not a lower-case letter (``Test``, ``Test_x``, ``TestÑ``; not ``Testify``).

Tests in a file not named ``*_test.go`` are moved to one (``main.go`` becomes
``main_test.go``) so that ``go test -c`` builds them; diagnostics name the file the client sent.
Counts come from ``-test.v`` lines the program prints, so a program can fake them: they are for
display, not for grading.
"""

from __future__ import annotations

import re
import unicodedata

FUNC_MAIN = re.compile(rb"^func\s+main\s*\(\s*\)", re.MULTILINE)
# A top-level function whose name starts like a test's; ``_is_test`` decides (Go identifiers:
# Unicode letters, digits and "_", which ``\w`` matches in a str pattern).
_FUNC_PREFIX = re.compile(r"^func\s+(Test|Example|Benchmark|Fuzz)(\w*)\s*\(", re.MULTILINE)
RUNS_TESTS = ("Test", "Example", "Fuzz")  # what makes a package without main run its tests
RESULT_LINE = re.compile(rb"^--- (PASS|FAIL|SKIP): ")
RUN_FLAGS = ("-test.v",)


def _is_test(rest: str) -> bool:
    """go's isTest: nothing after the prefix, or a first rune that is not lower case."""
    return not rest or unicodedata.category(rest[0]) != "Ll"


def kinds_of_tests(source: bytes) -> set[str]:
    """The prefixes (``Test``, ``Benchmark``, …) of the test functions in ``source``."""
    text = source.decode("utf-8", "replace")
    return {m.group(1) for m in _FUNC_PREFIX.finditer(text) if _is_test(m.group(2))}


def _root_go(files: dict[str, bytes]) -> list[str]:
    return [n for n in files if "/" not in n and n.endswith(".go")]


def wants_tests(files: dict[str, bytes], forced: bool = False) -> bool:
    """True when the package's tests should run instead of the program."""
    names = _root_go(files)
    if forced:  # any test function, benchmarks included (they are listed, not run)
        return any(n.endswith("_test.go") or kinds_of_tests(files[n]) for n in names)
    has_tests = any(n.endswith("_test.go") or kinds_of_tests(files[n]) & set(RUNS_TESTS)
                    for n in names)
    has_main = any(FUNC_MAIN.search(files[n]) for n in names if not n.endswith("_test.go"))
    return has_tests and not has_main


def as_test_package(files: dict[str, bytes]) -> tuple[dict[str, bytes], dict[str, str]]:
    """The files with tests moved into ``*_test.go`` names, and new name → sent name."""
    out: dict[str, bytes] = {}
    renamed: dict[str, str] = {}
    for name, data in files.items():
        if "/" not in name and name.endswith(".go") and not name.endswith("_test.go") \
                and kinds_of_tests(data):
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
