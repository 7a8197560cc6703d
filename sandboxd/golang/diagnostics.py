"""Compiler and vet messages, cleaned to read like ``main.go:10:7: undefined: time.Slseep``."""

from __future__ import annotations

import re

_PACKAGE_HEADER = re.compile(r"^# \S+( \[\S+\])?$")
_SOURCE_PREFIXES = ("/src/", "./")
_GOFMT_INPUT = "<standard input>:"
_NOISE = (
    "note: module requires Go",
    "go: warning: ignoring go.mod in",
)


def clean(text: str, renamed: dict[str, str] | None = None) -> str:
    """Drop package headers, sandbox paths and tool prefixes from build or vet output.

    ``renamed`` maps a file name the build used to the name the client sent.
    """
    lines = []
    for line in text.splitlines():
        if line.startswith(_GOFMT_INPUT):
            line = "main.go:" + line[len(_GOFMT_INPUT):]
        if _PACKAGE_HEADER.match(line):
            continue
        if line.startswith("vet: "):
            line = line[len("vet: "):]
        for prefix in _SOURCE_PREFIXES:
            if line.startswith(prefix):
                line = line[len(prefix):]
        line = line.replace("\t/src/", "\t").replace(" /src/", " ").replace("(/src/", "(")
        if any(line.startswith(n) for n in _NOISE):
            continue
        for used, sent in (renamed or {}).items():
            if line.startswith(used + ":"):
                line = sent + line[len(used):]
            line = line.replace(f" {used}:", f" {sent}:")
        lines.append(line)
    return "".join(f"{line}\n" for line in lines)


def is_type_error(text: str) -> bool:
    """True when ``go vet`` output says the package did not type-check (not a finding)."""
    return any(line.startswith("vet: ") for line in text.splitlines())
