"""A run request's test options: ``test_json`` (per-test events) and ``bench`` with
``benchtime`` (run benchmarks), checked.

``bench`` is a Go regular expression (RE2) that the test binary compiles itself; the daemon
cannot run Go's parser, so it accepts what both Go and Python's ``re`` read the same way:
1-256 printable characters, each ``/``-separated element compiling with ``re``, and none of the
Perl constructs RE2 refuses (look-around, back-references, atomic groups, possessive
repetition, conditionals, comments).  So ``\\pL`` or ``[[:alpha:]]``, which Go takes, are refused
here too; a pattern Go would still refuse makes the test binary exit 1 with its own message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_BENCH_LENGTH = 256
MAX_BENCH_TIMES = 1_000_000_000  # "Nx"
MAX_BENCH_MS = 300_000  # "Nms", "Ns": the run's wall limit bounds it anyway
_PERL_ONLY = re.compile(r"\(\?(?:[=!>#(]|<[=!])|\\[1-9g]|[*+?}]\+")
_BENCHTIME = re.compile(r"\A([1-9][0-9]{0,9})(x|ms|s)\Z")


class OptionError(ValueError):
    """What is wrong with a test option (the request's ``bad_request`` message)."""


@dataclass(frozen=True)
class TestOptions:
    test_json: bool = False
    bench: str | None = None
    benchtime: str | None = None


def test_options(obj: dict[str, Any]) -> TestOptions:
    test_json = obj.get("test_json", False)
    if not isinstance(test_json, bool):
        raise OptionError("field 'test_json' must be true or false")
    bench = obj.get("bench")
    benchtime = obj.get("benchtime")
    if bench is None:
        if benchtime is not None:
            raise OptionError("field 'benchtime' needs 'bench'")
        return TestOptions(test_json=test_json)
    if test_json:
        raise OptionError("give either 'bench' or 'test_json', not both (a benchmark run "
                          "runs no test)")
    check_bench(bench)
    if benchtime is not None:
        check_benchtime(benchtime)
    return TestOptions(bench=bench, benchtime=benchtime)


def check_bench(pattern: Any) -> None:
    if not isinstance(pattern, str) or not 1 <= len(pattern) <= MAX_BENCH_LENGTH:
        raise OptionError(f"field 'bench' must be a regular expression of 1-{MAX_BENCH_LENGTH} "
                          "characters")
    if not pattern.isprintable():
        raise OptionError("field 'bench' must hold printable characters only")
    if _PERL_ONLY.search(pattern):
        raise OptionError(f"field 'bench' is not a Go regular expression ({pattern!r}: "
                          "look-around, back-references, atomic groups and possessive "
                          "repetition are not RE2)")
    for element in split_elements(pattern):
        try:
            re.compile(element)
        except re.error as e:
            raise OptionError(f"field 'bench' is not a valid regular expression "
                              f"({pattern!r}: {e})") from None


def split_elements(pattern: str) -> list[str]:
    """The pattern cut at each ``/`` outside brackets and parentheses, as the testing
    package's ``splitRegexp`` does (one element per level of sub-benchmarks)."""
    elements, start, depth, in_class, i = [], 0, 0, False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "/" and depth <= 0:
            elements.append(pattern[start:i])
            start = i + 1
        i += 1
    elements.append(pattern[start:])
    return elements


def check_benchtime(value: Any) -> None:
    m = _BENCHTIME.match(value) if isinstance(value, str) else None
    ok = m is not None and int(m.group(1)) <= (
        MAX_BENCH_TIMES if m.group(2) == "x"
        else MAX_BENCH_MS if m.group(2) == "ms" else MAX_BENCH_MS // 1000)
    if not ok:
        raise OptionError(f"field 'benchtime' must be Nx (1 <= N <= {MAX_BENCH_TIMES} "
                          f"iterations), Nms or Ns (at most {MAX_BENCH_MS // 1000} s), e.g. "
                          "\"100x\" or \"200ms\"")
