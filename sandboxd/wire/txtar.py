"""The Go Playground's several-files form: ``-- name --`` lines start each file (txtar).

Text before the first marker is ``main.go`` (the Playground calls it prog.go), unless it is
only blank lines.  Names are checked like ``files`` names by the caller.
"""

from __future__ import annotations

import re

MARKER = re.compile(r"^-- (.+?) --[ \t]*$", re.MULTILINE)
MAIN = "main.go"


class TxtarError(ValueError):
    """The archive cannot be split; the message says why."""


def is_archive(text: str) -> bool:
    """True when ``text`` holds at least one file marker line."""
    return MARKER.search(text) is not None


def split(text: str) -> dict[str, str]:
    """The files of a txtar archive, in order."""
    files: dict[str, str] = {}
    markers = list(MARKER.finditer(text))
    head = text[: markers[0].start()] if markers else text
    if head.strip():
        files[MAIN] = head
    for i, m in enumerate(markers):
        name = m.group(1).strip()
        start = m.end() + 1 if m.end() < len(text) and text[m.end()] == "\n" else m.end()
        end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        if name in files:
            raise TxtarError(f"file {name!r} appears twice in the archive")
        files[name] = text[start:end]
    return files


def head_is_main(text: str) -> bool:
    """True when ``main.go`` of ``split(text)`` is the text before the first marker (it has
    no marker line of its own)."""
    m = MARKER.search(text)
    return bool((text[: m.start()] if m else text).strip())


def join(files: dict[str, bytes], head: bool) -> bytes:
    """The archive of ``files`` as golang.org/x/tools/txtar formats it: each file after its
    marker line, ending with a newline (one is added where it lacks); ``head``: the first file
    (``main.go``) goes before the first marker, with no marker of its own."""
    parts = []
    for i, (name, data) in enumerate(files.items()):
        if not (i == 0 and head and name == MAIN):
            parts.append(f"-- {name} --\n".encode())
        parts.append(data if not data or data.endswith(b"\n") else data + b"\n")
    return b"".join(parts)
