"""The ``/etc`` a box sees: a few files the daemon writes, never the host's.

Without any ``/etc`` Go's resolver asks DNS for ``localhost`` (``lookup localhost on [::1]:53``),
so the Go Playground's stock HTTP server example cannot reach itself, and ``os/user`` knows no
one.  Each box gets a read-only directory with ``hosts`` (localhost for IPv4 and IPv6, and the
box's hostname), ``passwd`` and ``group`` naming the box's user with its uid and gid, and
``nsswitch.conf`` (files, then DNS; a box has no DNS server, so only these names resolve).
Nothing in it comes from the host, and it names no host path: it is written into the run's own
daemon-mounted tmpfs (the one holding its /tmp), so a box's /proc/self/mountinfo shows it as
``/etc`` of that tmpfs, not as a directory of the host; only where the host cannot mount a
tmpfs is it a directory under the state dir, shared by the box's runs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

HOSTNAME = "sandbox"  # what bwrap --hostname sets (an isolate box has the host's hostname)
USER = "sandbox"  # RUN_ENV's USER


def contents(uid: int, gid: int) -> dict[str, str]:
    return {
        "hosts": ("127.0.0.1\tlocalhost\n"
                  "::1\tlocalhost ip6-localhost ip6-loopback\n"
                  f"127.0.1.1\t{HOSTNAME}\n"),
        "passwd": ("root:x:0:0:root:/root:/usr/sbin/nologin\n"
                   f"{USER}:x:{uid}:{gid}:{USER}:/box:/usr/sbin/nologin\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        "group": f"root:x:0:\n{USER}:x:{gid}:\nnogroup:x:65534:\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
    }


def write(target: Path, uid: int, gid: int) -> None:
    """Create ``target`` (it must not exist, in a directory only the daemon writes) with the
    files: root-owned and world-readable."""
    os.mkdir(target, 0o755)
    os.chmod(target, 0o755)
    for name, text in contents(uid, gid).items():
        path = target / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)


def ensure(root: Path, uid: int, gid: int) -> Path:
    """The directory for a box of ``uid``/``gid`` under ``root`` (a root-owned directory only
    the daemon writes), written once; root-owned and world-readable."""
    files = contents(uid, gid)
    digest = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:12]
    target = root / f"{uid}-{gid}-{digest}"  # named by its contents: never stale, never rewritten
    if target.is_dir():
        return target
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    work = root / f".{target.name}.{os.getpid()}"
    if work.exists():
        for entry in work.iterdir():
            entry.unlink()
        work.rmdir()
    write(work, uid, gid)
    try:
        os.rename(work, target)
    except OSError:
        for entry in work.iterdir():
            entry.unlink()
        work.rmdir()
        if not target.is_dir():
            raise
    return target
