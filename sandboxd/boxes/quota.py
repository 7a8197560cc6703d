"""What sessions may take: how many may live at once (in all, and per client), and how much
memory their boxes' files may hold together (tmpfs: files and their inodes), with who began
each session and how big its box may grow.  ``BoxPool`` asks before a session's request
waits; a refusal is ``QueueFull`` saying which bound."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sandboxd.boxes.hostfs import INODES_PER_MB
from sandboxd.boxes.slots import QueueFull

if TYPE_CHECKING:
    from sandboxd.boxes.box import Box
    from sandboxd.boxes.pool import PoolSettings

# Kernel memory of one tmpfs inode with its dentry (charged to the memory cgroup, not counted
# in the tmpfs size): measured 0.96 KiB for an empty file with a short name and 1.46 KiB with a
# 248-byte name (cgroup v1, Linux 6.18; bench/flood.py memory).  A box of disk_mb MiB may hold
# INODES_PER_MB files per MiB besides its data, so it holds at most its size and this each:
INODE_BYTES = 1536


def box_memory_mb(disk_mb: int) -> int:
    """The most memory a box's files can hold: its tmpfs size and its inodes."""
    return disk_mb + -(-disk_mb * INODES_PER_MB * INODE_BYTES // (1024 * 1024))


class SessionQuota:
    """The live sessions' shares.  ``live()``: the ids of the sessions that hold a box or
    whose first request waits for one; ``cleanup()``: expire what can be expired (tried once
    before a refusal)."""

    def __init__(self, settings: PoolSettings, live: Callable[[], set[str]],
                 cleanup: Callable[[], None]) -> None:
        self.settings = settings
        self.live = live
        self.cleanup = cleanup
        self.owner: dict[str, str] = {}  # the client that began each session
        # The MiB each session's box may grow to (the largest run.disk_mb any of its requests
        # asked for: a tmpfs cannot shrink below what it holds).
        self.mb: dict[str, int] = {}

    @property
    def memory_mb(self) -> int:
        """The most memory session boxes can hold together now (files and inodes)."""
        return sum(box_memory_mb(mb) for mb in self.mb.values())

    def of(self, client: str) -> int:
        """How many live sessions ``client`` began."""
        return sum(1 for sid in self.live() if self.owner.get(sid) == client)

    def check_new(self, client: str) -> None:
        """``QueueFull`` when no new session may begin, or none of ``client``'s."""
        s = self.settings
        if len(self.live()) >= s.max_sessions:
            self.cleanup()
            if len(self.live()) >= s.max_sessions:
                raise QueueFull(f"too many live sessions ({s.max_sessions})")
        if self.of(client) >= s.max_sessions_per_client:
            self.cleanup()
            owned = self.of(client)
            if owned >= s.max_sessions_per_client:
                raise QueueFull(
                    f"this client already has {owned} live sessions, its share "
                    f"({s.max_sessions_per_client}); end one or wait for one to expire")

    def memory_needed(self, session_id: str, disk_mb: int | None) -> int:
        """The size the session's box may have after this request: the largest ``disk_mb``
        any of its requests has asked for.  ``QueueFull`` when all session boxes together
        could then hold more memory (files and their inodes: ``box_memory_mb``) than
        ``max_box_memory_mb``."""
        bound = self.settings.max_box_memory_mb
        had = self.mb.get(session_id, 0)
        need = max(had, disk_mb or self.settings.disk_mb)
        if need == had or bound is None:
            return need
        held = self.memory_mb - box_memory_mb(had)
        if held + box_memory_mb(need) > bound:
            self.cleanup()
            held = self.memory_mb - box_memory_mb(self.mb.get(session_id, 0))
            if held + box_memory_mb(need) > bound:
                raise QueueFull(
                    f"session boxes would hold more memory than this server allows ({bound} "
                    f"MiB): {held} MiB are taken by live sessions and this session's box "
                    f"needs {box_memory_mb(need)} MiB (run.disk_mb {need}, and its inodes); "
                    "ask for less disk_mb, or try again when sessions have ended")
        return need

    def expired(self, box: Box, now: float) -> bool:
        """Idle past its time, or alive past its maximum age."""
        return (now - box.last_used > self.settings.session_idle_s
                or now - box.created > self.settings.session_max_age_s)

    def expires_in(self, box: Box, now: float) -> float:
        """Seconds from ``now`` until the session of ``box`` expires if no request uses it
        again: its idle time counted from now (its request is ending), within its maximum age;
        0 when it ends with its running request.  Its box is kept at least that long; the first
        cleanup after that removes it."""
        if box.expired:
            return 0.0
        s = self.settings
        return max(0.0, min(s.session_idle_s, box.created + s.session_max_age_s - now))

    def reserve(self, session_id: str, client: str, need: int) -> None:
        self.mb[session_id] = need
        self.owner.setdefault(session_id, client)

    def forget(self, session_id: str) -> None:
        """A session with no box and no request left: its reservation and owner go."""
        if session_id not in self.live():
            self.owner.pop(session_id, None)
            self.mb.pop(session_id, None)

    def clear(self) -> None:
        self.owner.clear()
        self.mb.clear()
