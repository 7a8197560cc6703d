"""``//GOEXPERIMENT=`` header lines, read as the Go Playground reads them.

golang/playground's sandbox.go (``experiments``): in each file of the top directory, the lines
before the first one that is neither blank nor a ``//`` comment are the header; a header line
``// GOEXPERIMENT = foo,bar`` (spaces allowed around each part) names experiments, and each
such value is kept (in file order here; the Playground's map order is random).  The build (and
the test build, and vet) then runs with ``GOEXPERIMENT`` set to the values joined by commas.
The go command checks the names: an unknown one is its error (``go: unknown GOEXPERIMENT x``),
a ``compile_error`` like any other.

What the go command cannot be handed at all is refused here, with a message of the same kind:
a value holding a character that is not printable ASCII (a NUL cannot be put into an
environment), or more than ``MAX_LENGTH`` bytes in all (execve's bound on one variable).
"""

from __future__ import annotations

import re

MAX_LENGTH = 4096  # Go's experiments joined, each with "no", are well under 1 KiB
_PRINTABLE = re.compile(r"\A[\x20-\x7e]*\Z")
# Go's unicode.IsSpace in Latin-1 (strings.TrimSpace); above it, Python's isspace is close.
_LATIN1_SPACE = "\t\n\v\f\r \x85\xa0"


class ExperimentError(ValueError):
    """A header the go command cannot be given; the message says why, naming the file."""


def _trim(text: str) -> str:
    """strings.TrimSpace."""
    start, end = 0, len(text)
    while start < end and _is_space(text[start]):
        start += 1
    while end > start and _is_space(text[end - 1]):
        end -= 1
    return text[start:end]


def _is_space(c: str) -> bool:
    return c in _LATIN1_SPACE if ord(c) < 0x100 else c.isspace()


def header(source: str) -> list[str]:
    """The experiments the header of one file names (the Playground's ``experiments``)."""
    found: list[str] = []
    for raw in source.split("\n"):
        line = _trim(raw)
        if not line:
            continue
        if not line.startswith("//"):
            break
        line = _trim(line[2:])
        if not line.startswith("GOEXPERIMENT"):
            continue
        line = _trim(line[len("GOEXPERIMENT"):])
        if not line.startswith("="):
            continue
        line = _trim(line[1:])
        if line:
            found.append(line)
    return found


def of_files(files: dict[str, bytes]) -> str:
    """``GOEXPERIMENT`` for a build of ``files``: the headers of the top directory's files,
    joined; "" when none names one.  Raises ``ExperimentError``."""
    values: list[str] = []
    for name, data in files.items():
        if "/" in name:
            continue
        for value in header(data.decode("utf-8", "replace")):
            if not _PRINTABLE.match(value):
                raise ExperimentError(
                    f"{name}: //GOEXPERIMENT={value!r}: only printable ASCII can name an "
                    "experiment")
            values.append(value)
    joined = ",".join(values)
    if len(joined) > MAX_LENGTH:
        raise ExperimentError(
            f"//GOEXPERIMENT= lines name {len(joined)} bytes of experiments (at most "
            f"{MAX_LENGTH})")
    return joined
