"""A judged case's answer against the expected one: the judge's comparison rule, pure.

The rule (docs/protocol.md, "Judging"): both texts are split into lines at ``\\n``; spaces,
tabs and carriage returns at the end of a line are not compared, nor are empty lines at the
end of the text (so a missing or an extra final newline, CRLF line ends and trailing blanks are
accepted, as most judges do); everything else is, byte for byte: leading spaces, empty lines
between lines, letter case.  The first line that differs is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# What a line may end with that is not compared.
TRAILING = b" \t\r"
# A line shown in a wrong answer: its first characters only.
SHOWN_CHARS = 200
# Kept of a case's stdout beyond the length of its expected output.  Output longer than that is
# a wrong answer whatever it holds (even blank lines): the daemon keeps no more of it.
SLACK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Difference:
    """The first line that differs: its number (from 1) and each side's text, None where that
    side has no such line (it ended before)."""

    line: int
    expected: str | None
    got: str | None
    cut: bool = False  # the output went on past what is kept (``SLACK_BYTES``)

    def fields(self) -> dict[str, Any]:
        return {"line": self.line, "expected": self.expected, "got": self.got}

    def message(self) -> str:
        if self.cut:
            return (f"the output is more than {SLACK_BYTES} bytes longer than the expected "
                    "output")
        if self.got is None:
            return f"the output ended before line {self.line} of the expected output"
        if self.expected is None:
            return f"the output has more lines than the expected output (line {self.line})"
        return f"line {self.line} differs from the expected output"


def first_difference(expected: bytes, got: bytes, cut: bool = False) -> Difference | None:
    """Where ``got`` differs from ``expected`` by the rule above; None when it does not.
    ``cut``: ``got`` is only the start of the output (its last, unfinished line is not
    compared), so it differs even where everything kept matches."""
    if cut:
        got = got[: got.rfind(b"\n") + 1]
    want, have = _lines(expected), _lines(got)
    for i in range(max(len(want), len(have))):
        w = want[i] if i < len(want) else None
        h = have[i] if i < len(have) else None
        if w is None or h is None or w.rstrip(TRAILING) != h.rstrip(TRAILING):
            return Difference(i + 1, _shown(w), _shown(h))
    if cut:
        return Difference(len(have) + 1, None, "", cut=True)
    return None


def _lines(text: bytes) -> list[bytes]:
    """The lines of ``text`` without their ``\\n``, empty ones at the end left out."""
    lines = text.split(b"\n")
    while lines and not lines[-1].rstrip(TRAILING):
        lines.pop()
    return lines


def _shown(line: bytes | None) -> str | None:
    """A line as the client sees it: UTF-8 (U+FFFD for what is not), its first
    ``SHOWN_CHARS`` characters and ``…`` when it is longer."""
    if line is None:
        return None
    text = line.decode("utf-8", "replace")
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"
