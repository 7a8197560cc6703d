"""A box's processes found by its uid: CPU and memory accounting on hosts without a usable
cgroup.

Every box runs as a uid of its own and one request at a time uses a box, so the processes of
that uid are exactly the processes of the running request (``setsid`` and double forks
included).  Summing their CPU time (their own and their reaped children's) lets the daemon stop
a whole box at its CPU limit even where only per-process ``RLIMIT_CPU`` exists.  A process that
makes itself non-dumpable shows up as root's and is missed; ``RLIMIT_CPU`` still bounds it.
"""

from __future__ import annotations

import os
import signal

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def pids_of(uid: int) -> list[int]:
    """The processes whose /proc entry belongs to ``uid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid == uid:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_all(uid: int) -> None:
    """SIGKILL every process running as ``uid`` (a box's own: it belongs to no one else)."""
    for pid in pids_of(uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still exist and are not zombies.  A killed process exists until
    its exit is complete (its memory freed, a sandbox's init until its pid namespace is
    empty); a zombie has released everything but its pid."""
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[:1]
        except OSError:
            continue
        if state and state[0] not in (b"Z", b"X"):
            found.append(pid)
    return found


def usage(uid: int) -> tuple[int, int]:
    """(CPU ns, resident bytes) of ``uid``'s processes.  CPU counts their own time and their
    reaped children's; memory is summed over the processes, because ``RLIMIT_AS`` bounds
    each process alone."""
    cpu = resident = 0
    for pid in pids_of(uid):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{pid}/statm", "rb") as f:
                statm = f.read()
        except OSError:
            continue
        fields = stat.rpartition(b")")[2].split()
        try:
            cpu += sum(int(x) for x in fields[11:15])
            resident += int(statm.split()[1])
        except (ValueError, IndexError):
            continue
    return cpu * 1_000_000_000 // TICKS, resident * PAGE
