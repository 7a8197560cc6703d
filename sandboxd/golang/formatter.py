"""The formatter: a request's files formatted file by file in one box, as the Go Playground's
``/fmt`` does (golang/playground fmt.go): each ``.go`` file with the toolchain's ``gofmt`` (or,
with ``imports``, goimports and then gofmt), each file named ``go.mod`` (any directory) with the
go command's own formatting (``go mod edit -fmt -print`` of a copy), every other file as it is.
The first file that does not format ends it, its error naming the file.

Everything that parses the request's text runs inside the box; the files are read-only at /src.
One shell in the box formats them in order and answers on stdout, per file, a line
``INDEX SIZE`` and then SIZE bytes, or ``failed INDEX`` (the tool's error on stderr) and exits 1.
One ``.go`` file alone without imports (the common case: an editor's Format button, the client)
is gofmt alone, the file on its stdin, as before archives: ~20 ms less than the shell (measured
here: 21 ms against 39 ms in the box).

goimports is Debian's (``golang-golang-x-tools``: a static binary under /usr, which every box
sees read-only); it finds the standard library through the toolchain's go command (``PATH`` and
``GOROOT`` of the build's environment).  Its output goes through the toolchain's gofmt, so the
layout is the toolchain's own, whatever Go goimports was built with.  Like the Playground's, it
reads one file alone (no sibling files, no go.mod).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

from sandboxd.golang.toolchain import GOROOT_INSIDE

GOIMPORTS_PLACES = ("/usr/bin/goimports", "/usr/local/bin/goimports")
MOD_DIR = "/tmp/fmt.mod"  # where the box formats a copy of a go.mod
MOD_COPY = f"{MOD_DIR}/go.mod"  # (the go command's errors name it)
STDIN_NAME = "<standard input>"  # how gofmt and goimports name what they read

_SCRIPT = f"""
goimports=$1; shift
fmt_go() {{
  if [ -n "$goimports" ]; then
    "$goimports" <"$1" >/tmp/fmt.in && {GOROOT_INSIDE}/bin/gofmt </tmp/fmt.in
  else
    {GOROOT_INSIDE}/bin/gofmt <"$1"
  fi
}}
fmt_mod() {{
  mkdir -p {MOD_DIR} && cp "$1" {MOD_COPY} && cd {MOD_DIR} &&
    {GOROOT_INSIDE}/bin/go mod edit -fmt -print
}}
i=0
for f do
  case $f in
    *.go) fmt_go "/src/$f" ;;
    *) (fmt_mod "/src/$f") ;;
  esac >/tmp/fmt.out 2>/tmp/fmt.err
  if [ $? -ne 0 ]; then
    echo "failed $i"
    cat /tmp/fmt.err >&2
    exit 1
  fi
  echo "$i $(wc -c </tmp/fmt.out)"
  cat /tmp/fmt.out
  i=$((i + 1))
done
"""


class FormatterError(RuntimeError):
    """The box's answer could not be read (the sandbox, not the request)."""


@dataclass
class Formatted:
    """What the box answered: the formatted files, in order, up to the first that failed."""

    files: list[bytes]
    failed: int | None = None  # the index of the file that did not format


def find_goimports(setting: str = "auto") -> str | None:
    """The goimports boxes run, as ``--goimports`` says (``goimports_option``): ``auto``, the
    first of ``GOIMPORTS_PLACES`` that is there; ``off``, none; else that path."""
    if setting == "off":
        return None
    if setting != "auto":
        return setting
    for place in GOIMPORTS_PLACES:
        if _usable(place):
            return place
    return None


def goimports_option(value: str) -> str:
    """``--goimports``: auto, off, or an executable under /usr (the one tree of the host that
    every box sees, read-only); raises ValueError saying what it is not."""
    if value in ("auto", "off"):
        return value
    if not os.path.isabs(value) or not os.path.realpath(value).startswith("/usr/"):
        raise ValueError("is not auto, off or a path under /usr (what boxes see)")
    if not _usable(value):
        raise ValueError("is not an executable file")
    return os.path.realpath(value)


def _usable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK) and (
        os.path.realpath(path).startswith("/usr/"))


def formats(name: str) -> bool:
    """Whether the formatter changes the file: ``.go`` files and ``go.mod`` files."""
    return name.endswith(".go") or posixpath.basename(name) == "go.mod"


def alone(names: list[str], goimports: str | None) -> bool:
    """Whether gofmt alone formats ``names``: one Go file, no imports (see the docstring)."""
    return len(names) == 1 and names[0].endswith(".go") and not goimports


def argv(names: list[str], goimports: str | None) -> list[str]:
    """The box's command line: format ``names`` (files under /src) in order; when ``alone``,
    gofmt of its stdin."""
    if alone(names, goimports):
        return [f"{GOROOT_INSIDE}/bin/gofmt"]
    return ["/bin/sh", "-c", _SCRIPT, "sandboxd-fmt", goimports or "", *names]


def read_answer(stdout: bytes, count: int, exit_code: int | None = None) -> Formatted:
    """The box's answer about ``count`` files; ``exit_code``: gofmt's, when it ran alone."""
    if exit_code is not None:
        return Formatted([stdout]) if exit_code == 0 else Formatted([], 0)
    out: list[bytes] = []
    pos = 0
    while len(out) < count:
        end = stdout.find(b"\n", pos)
        if end < 0:
            raise FormatterError(f"the formatter stopped after {len(out)} of {count} files")
        head = stdout[pos:end].split(b" ")
        try:
            if head[0] == b"failed" and len(head) == 2 and int(head[1]) == len(out):
                return Formatted(out, len(out))
            index, size = (int(part) for part in head)
        except ValueError:
            raise FormatterError("the formatter's answer could not be read") from None
        data = stdout[end + 1:end + 1 + size]
        if index != len(out) or size < 0 or len(data) != size:
            raise FormatterError("the formatter's answer could not be read")
        out.append(data)
        pos = end + 1 + size
    if pos != len(stdout):
        raise FormatterError("the formatter said more than it was asked")
    return Formatted(out)


def error_text(stderr: str, name: str) -> str:
    """A tool's error about one file, naming the file as the request did
    (``dir/one.go:1:9: expected 'IDENT', found 123``, ``go.mod:1: unknown directive: 123``)."""
    lines = []
    for line in stderr.splitlines():
        if line.startswith("go: errors parsing "):
            continue
        for said in (f"{STDIN_NAME}:", f"{MOD_COPY}:"):
            if line.startswith(said):
                line = f"{name}:{line[len(said):]}"
        lines.append(line)
    return "".join(f"{line}\n" for line in lines)
