"""What may be executed in a box: an ELF executable for this machine, and nothing else.

``go build -o FILE`` of a package that is not ``main`` writes an archive (``!<arch>``), not a
program.  Executed, it fails with ENOEXEC, and ``execvp`` (bwrap's exec) then hands it to
``/bin/sh`` as a script.  So the daemon reads the header of every program before it is placed in
a box: a build whose output is an archive is the client's ``compile_error``; anything else that
is not an ELF executable of this machine's class, byte order and architecture is never run.
The file read is the one the box gets (a root-owned, read-only binary-cache entry or a hard
link to it), so what was checked is what runs.
"""

from __future__ import annotations

import os
import struct

ARCHIVE_MAGIC = b"!<arch>\n"
ELF_MAGIC = b"\x7fELF"
ET_EXEC, ET_DYN = 2, 3
HEADER_BYTES = 20  # e_ident (16), e_type (2), e_machine (2)


def _host_header() -> bytes:
    with open("/proc/self/exe", "rb") as f:
        return f.read(HEADER_BYTES)


_HOST = _host_header()


class NotAProgram(Exception):
    """The file must not be executed; ``archive`` says whether it is a Go package archive."""

    def __init__(self, reason: str, archive: bool = False) -> None:
        super().__init__(reason)
        self.archive = archive


def check_fd(fd: int) -> None:
    """Raise ``NotAProgram`` unless the open file is an ELF executable for this machine."""
    head = os.pread(fd, HEADER_BYTES, 0)
    if head.startswith(ARCHIVE_MAGIC):
        raise NotAProgram("a package archive, not a program", archive=True)
    if len(head) < HEADER_BYTES or not head.startswith(ELF_MAGIC):
        raise NotAProgram("not an ELF file")
    # EI_CLASS and EI_DATA (bytes 4, 5) as this machine's; then e_type and e_machine.
    if head[4:6] != _HOST[4:6]:
        raise NotAProgram("an ELF file of another class or byte order")
    order = "<" if head[5] == 1 else ">"
    e_type, machine = struct.unpack(order + "HH", head[16:20])
    if e_type not in (ET_EXEC, ET_DYN):
        raise NotAProgram("an ELF file that is not an executable")
    if machine != struct.unpack(order + "H", _HOST[18:20])[0]:
        raise NotAProgram("an ELF executable for another architecture")


def check(path: os.PathLike | str) -> None:
    """``check_fd`` of the file at ``path`` (a daemon-owned file: links are not followed)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        check_fd(fd)
    finally:
        os.close(fd)
