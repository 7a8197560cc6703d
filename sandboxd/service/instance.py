"""One daemon per state directory, and box ranges no two daemons share.

Both are ``flock`` locks, so a daemon that dies (SIGKILL included) releases them with its last
descriptor, and nothing has to be cleaned up by hand:

- ``STATE_DIR/sandboxd.lock``, taken before the daemon touches anything of the state
  directory (the sweep of a dead daemon's boxes, cgroups and builds included).  It holds the
  holder's pid, for the refusal message.
- ``/run/sandboxd/ranges/<hash of the state dir>``: each running daemon's box numbers and box
  uids, one file each, held locked while it runs.  A new daemon reads the others' under
  ``/run/sandboxd/ranges.lock`` and refuses to start when its uids overlap one of theirs
  (isolate's box ids are machine-wide, and every driver kills a box's processes by its uid).
  A file whose lock is free belongs to a dead daemon and is removed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = Path("/run/sandboxd")


class StartError(Exception):
    """The daemon cannot start; the message (one line or a short paragraph) says why and
    what to do about it."""


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors="replace").strip()


def _rewrite(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def lock_state_dir(state_dir: Path) -> int:
    """Take the state directory's lock (creating the directory); its descriptor, kept open
    for the daemon's life.  StartError when another daemon holds it."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / "sandboxd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                     | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise StartError(f"--state-dir {state_dir}: {_why(e)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd) or "?"
        os.close(fd)
        raise StartError(
            f"another sandboxd (pid {holder}) is running on --state-dir {state_dir}; "
            "stop it first, or give this one its own --state-dir") from None
    mark_holder(fd)
    return fd


def mark_holder(fd: int) -> None:
    """Write our pid into a lock file we hold (again after twistd forked to daemonize)."""
    _rewrite(fd, f"{os.getpid()}\n")


@dataclass(frozen=True)
class Range:
    """What one daemon uses: box numbers and the uids its boxes run as (inclusive)."""

    first_box: int
    last_box: int
    first_uid: int
    last_uid: int

    def overlaps(self, other: Range) -> bool:
        return self.first_uid <= other.last_uid and other.first_uid <= self.last_uid

    def __str__(self) -> str:
        return (f"boxes {self.first_box}-{self.last_box}, uids "
                f"{self.first_uid}-{self.last_uid}")


def register_range(state_dir: Path, mine: Range, run_dir: Path = RUN_DIR) -> int:
    """Record ``mine`` machine-wide; its descriptor, kept open for the daemon's life.
    StartError when a running daemon's range overlaps it."""
    ranges = run_dir / "ranges"
    try:
        ranges.mkdir(parents=True, exist_ok=True, mode=0o700)
        guard = os.open(run_dir / "ranges.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StartError(f"cannot keep the box-range registry in {run_dir}: {_why(e)}") from None
    name = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        for entry in ranges.iterdir():
            if entry.name == name:
                continue
            try:
                fd = os.open(entry, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pid, theirs, where = _parse(_read(fd))
                    if theirs is not None and theirs.overlaps(mine):
                        raise StartError(
                            f"another sandboxd (pid {pid}, --state-dir {where}) uses {theirs}; "
                            f"this one would use {mine}: give it a --first-box (and, for "
                            "bubblewrap, --first-uid) range of its own") from None
                    continue
                entry.unlink(missing_ok=True)  # its daemon is gone
            finally:
                os.close(fd)
        fd = os.open(ranges / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _rewrite(fd, f"{os.getpid()} {mine.first_box} {mine.last_box} {mine.first_uid} "
                     f"{mine.last_uid} {state_dir.resolve()}\n")
        return fd
    finally:
        os.close(guard)


def unregister_range(state_dir: Path, fd: int, run_dir: Path = RUN_DIR) -> None:
    """At a clean stop: our registry file goes (a killed daemon's goes at the next start)."""
    name = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    try:
        guard = os.open(run_dir / "ranges.lock", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        (run_dir / "ranges" / name).unlink(missing_ok=True)
        os.close(fd)
    finally:
        os.close(guard)


def update_range_pid(fd: int) -> None:
    text = _read(fd)
    _, _, rest = text.partition(" ")
    _rewrite(fd, f"{os.getpid()} {rest}\n")


def _parse(text: str) -> tuple[str, Range | None, str]:
    parts = text.split(" ", 5)
    try:
        numbers = [int(p) for p in parts[1:5]]
        return parts[0], Range(*numbers), parts[5] if len(parts) > 5 else "?"
    except (ValueError, TypeError):
        return (parts[0] if parts else "?"), None, "?"


def _why(e: OSError) -> str:
    if e.errno == errno.ENOTDIR:
        return "a path component is not a directory"
    if e.errno == errno.EEXIST:
        return "exists and is not a directory"
    if e.errno == errno.EACCES:
        return "permission denied (sandboxd runs as root)"
    if e.errno == errno.EROFS:
        return "on a read-only file system"
    return e.strerror or str(e)
