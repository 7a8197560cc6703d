"""Compiler and vet messages, cleaned to read like ``main.go:10:7: undefined: time.Slseep``."""

from __future__ import annotations

import re

_PACKAGE_HEADER = re.compile(r"^# \S+$")
_SOURCE_PREFIXES = ("/src/", "./")
_NOISE = (
    "note: module requires Go",
    "go: warning: ignoring go.mod in",
)


def clean(text: str) -> str:
    """Drop package headers, sandbox paths and tool prefixes from build or vet output."""
    lines = []
    for line in text.splitlines():
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
        lines.append(line)
    return "".join(f"{line}\n" for line in lines)
