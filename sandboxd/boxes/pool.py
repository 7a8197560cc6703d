"""The box pool: how many boxes run at once, who waits, which box a request gets.

``FairSlots`` lets ``--boxes`` requests run at once; the rest wait, each client's first in,
first out, and a freed box goes to the next *client* in turn (round-robin), so one client's
flood costs that client, not its neighbours.  A client (see ``sandboxd.wire.connection``) may have
``--max-queue-per-client`` requests waiting and ``--max-sessions-per-client`` live sessions;
when the whole queue (``--max-queue``) is full, the newest waiting request of the client with
the most waiting gives its place to a client with fewer.  Session boxes keep their files
between requests, in memory (tmpfs): the sizes they may grow to are reserved here, and a
request that would take the total past ``--max-box-memory-mb`` is refused at once.

A request with a ``session_id`` gets that session's own box (same uid, same files) and
requests of one session take turns; a request without one gets a box that holds no file of
any earlier request.  Used anonymous boxes are wiped after their request, off the next
request's path, and kept ready.  A ``LoopingCall`` expires idle and old
sessions; one failing step is logged and never stops it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sandboxd.boxes.box import Box
from sandboxd.boxes.quota import SessionQuota
from sandboxd.boxes.slots import FairSlots, QueueFull

log = Logger()

MAX_BOX_NUMBER = 4000


class Driver(Protocol):
    """What the pool asks of a sandbox driver (``sandboxd.sandbox.driver.Driver`` is one): the
    pool is below the sandbox, so it names only what it calls."""

    def sweep(self) -> None: ...
    def uid_for(self, number: int) -> int: ...
    def gid_for(self, number: int) -> int: ...
    def workspace_for(self, number: int) -> Path: ...
    def create_box(self, box: Box, disk_mb: int) -> None: ...
    def destroy_box(self, box: Box) -> None: ...
    def wipe_box(self, box: Box, disk_mb: int) -> None: ...
# The client of callers that name none (the health check, unit tests): one client.
NO_CLIENT = "-"


@dataclass
class PoolSettings:
    boxes: int
    max_queue: int = 100
    max_sessions: int = 256
    max_queue_per_client: int = 10
    max_sessions_per_client: int = 16
    # What all session boxes' files may hold together (MiB; their tmpfs sizes); None: no bound.
    max_box_memory_mb: int | None = None
    session_idle_s: float = 20 * 60
    session_max_age_s: float = 30 * 60
    cleanup_period_s: float = 5 * 60
    disk_mb: int = 64
    first_box: int = 0  # box numbers start here (isolate's box ids are machine-wide)


class BoxPool:
    def __init__(
        self,
        driver: Driver,
        settings: PoolSettings,
        clock: IReactorTime,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.driver = driver
        self.settings = settings
        self.clock = clock
        self.now = now
        self.slots = FairSlots(settings.boxes)
        self.sessions: dict[str, Box] = {}
        self.session_locks: dict[str, defer.DeferredLock] = {}
        self.quota = SessionQuota(settings, self._live_sessions, self.cleanup)
        self.ready: list[Box] = []
        self.busy: set[int] = set()
        self._taken: dict[int, Box] = {}  # the boxes requests hold now, by number
        self.holder: dict[int, str] = {}  # busy box number -> the client its request is of
        self.waiting = 0
        self.waiting_by: dict[str, int] = {}  # per client: requests waiting (lock or slot)
        self._numbers_in_use: set[int] = set()
        self.stopped = False
        self._top_up_pending = False
        self._cleanup = LoopingCall(self.cleanup)
        self._cleanup.clock = clock
        # Told when an anonymous box becomes ready (again, after each wipe), and when any box
        # is destroyed: what is prepared ahead for a box (``sandboxd.jobs.heldbuild``) dies with it.
        self.on_ready: Callable[[Box], None] = lambda box: None
        self.on_retire: Callable[[Box], None] = lambda box: None

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        self.driver.sweep()
        for _ in range(self.settings.boxes):
            self._make_ready(self._new_box())
        self._start_cleanup()

    def _start_cleanup(self) -> None:
        d = self._cleanup.start(self.settings.cleanup_period_s, now=False)
        d.addErrback(self._cleanup_died)

    def _cleanup_died(self, failure) -> None:
        log.failure("session cleanup loop stopped; restarting it", failure)
        self._start_cleanup()

    def stop(self) -> None:
        """Destroy every box: ready ones, sessions', and any a request still holds (at the
        end of a shutdown that is a request that did not end: its box goes all the same)."""
        self.stopped = True
        if self._cleanup.running:
            self._cleanup.stop()
        held = [box for box in self._taken.values() if box.session_id is None]
        for box in held:
            log.warn("{box} is still held by a request at shutdown; removing it", box=box)
        for box in [*self.ready, *self.sessions.values(), *held]:
            self._destroy(box)
        self.ready.clear()
        self.sessions.clear()
        self._taken.clear()
        self.quota.clear()

    @property
    def running(self) -> int:
        return len(self.busy)

    # -- boxes -----------------------------------------------------------------------------

    def _new_box(self, session_id: str | None = None, disk_mb: int | None = None) -> Box:
        first = self.settings.first_box
        number = next(n for n in range(first, first + MAX_BOX_NUMBER)
                      if n not in self._numbers_in_use)
        self._numbers_in_use.add(number)
        uid = self.driver.uid_for(number)
        now = self.now()  # the pool's clock, not the wall: sessions expire by it
        box = Box(number, uid, self.driver.gid_for(number), self.driver.workspace_for(number),
                  session_id=session_id,
                  created=now, last_used=now)
        try:
            self.driver.create_box(box, disk_mb or self.settings.disk_mb)
        except Exception:
            self._numbers_in_use.discard(number)
            raise
        return box

    def spare_box(self) -> Box:
        """A fresh box outside the pool's accounting (the health check's); ``drop_box`` it."""
        return self._new_box()

    def drop_box(self, box: Box) -> None:
        self._destroy(box)

    def _make_ready(self, box: Box) -> None:
        self.ready.append(box)
        try:
            self.on_ready(box)
        except Exception:
            log.failure("preparing ahead for {box}", box=box)

    def _retire(self, box: Box) -> None:
        try:
            self.on_retire(box)
        except Exception:
            log.failure("ending what was prepared ahead for {box}", box=box)

    def _destroy(self, box: Box) -> None:
        self._retire(box)
        try:
            self.driver.destroy_box(box)
        except Exception:
            log.failure("destroying {box}", box=box)
        self._numbers_in_use.discard(box.number)

    # -- requests --------------------------------------------------------------------------

    def acquire(self, session_id: str | None, client: str = NO_CLIENT,
                disk_mb: int | None = None) -> defer.Deferred[Box]:
        """A box for one request of ``client``, whose run may fill ``disk_mb`` MiB of the box
        (a session's box keeps it); cancel the Deferred to stop waiting."""
        try:
            self._admit(session_id, client, disk_mb)
        except QueueFull as e:
            return defer.fail(e)
        self.waiting += 1
        self.waiting_by[client] = self.waiting_by.get(client, 0) + 1
        return defer.ensureDeferred(self._acquire(session_id, client))

    def _admit(self, session_id: str | None, client: str, disk_mb: int | None) -> None:
        """Raise ``QueueFull`` (saying which bound) when the request may not wait; else take
        its place (pushing a heavier client's newest waiter out if the queue is full)."""
        s = self.settings
        need = 0
        if session_id is not None:
            if session_id not in self._live_sessions():
                self.quota.check_new(client)
            need = self.quota.memory_needed(session_id, disk_mb)
        mine = self.waiting_by.get(client, 0)
        if mine >= s.max_queue_per_client:
            raise QueueFull(
                f"this client already has {mine} requests waiting for a box, its share of the "
                f"queue ({s.max_queue_per_client}); send more when some have ended")
        if self.waiting >= s.max_queue and not self.slots.push_out(
            client, mine,
            f"the queue is full ({s.max_queue} waiting) and this client had the most requests "
            "waiting: this one gave its place to a client with fewer",
        ):
            raise QueueFull(f"the queue is full ({s.max_queue} waiting)")
        if session_id is not None:
            self.quota.reserve(session_id, client, need)

    def _live_sessions(self) -> set[str]:
        """Live sessions, and new ones whose first request still waits: each will hold a box."""
        return self.sessions.keys() | self.session_locks.keys()

    async def _acquire(self, session_id: str | None, client: str) -> Box:
        try:
            if session_id is not None:
                await self.session_locks.setdefault(session_id, defer.DeferredLock()).acquire()
            try:
                if session_id is None and self.slots.tokens == 0:
                    self._top_up_soon()
                await self.slots.acquire(client)
            except BaseException:
                if session_id is not None:
                    self._release_session_lock(session_id)
                raise
        finally:
            self.waiting -= 1
            left = self.waiting_by[client] - 1
            if left:
                self.waiting_by[client] = left
            else:
                del self.waiting_by[client]
        try:
            box = self._take_box(session_id)
        except BaseException:
            self.slots.release(client)
            if session_id is not None:
                self._release_session_lock(session_id)
            raise
        return self._hand_out(box, client)

    def _hand_out(self, box: Box, client: str) -> Box:
        box.in_use = True
        box.last_used = self.now()
        box.runs += 1
        self.busy.add(box.number)
        self._taken[box.number] = box
        self.holder[box.number] = client
        return box

    def _take_box(self, session_id: str | None) -> Box:
        if session_id is not None:
            box = self.sessions.get(session_id)
            if box is None:  # made no bigger than the session reserved
                box = self._new_box(session_id, self.quota.mb.get(session_id))
                self.sessions[session_id] = box
            return box
        if self.ready:
            return self.ready.pop()
        return self._new_box()

    def _top_up_soon(self) -> None:
        """Requests are waiting: make spare ready boxes now, off their path, so that the one
        woken when a box is released finds a ready box instead of making one, while the used
        box is wiped (bursts).  Surplus boxes are destroyed when recycled."""
        if not self._top_up_pending:
            self._top_up_pending = True
            self.clock.callLater(0, self._top_up)

    def _top_up(self) -> None:
        self._top_up_pending = False
        try:
            while not self.stopped and len(self.ready) < self.settings.boxes:
                self._make_ready(self._new_box())
        except Exception:
            log.failure("making a spare ready box")

    def release(self, box: Box) -> None:
        """The request is over (its processes are gone): give the box back."""
        box.in_use = False
        box.last_used = self.now()
        self.busy.discard(box.number)
        self.slots.release(self.holder.pop(box.number, NO_CLIENT))
        if self._taken.pop(box.number, None) is None and self.stopped:
            if box.session_id is not None:
                self._release_session_lock(box.session_id)
            return  # destroyed by ``stop`` while its request still held it
        if box.session_id is None:
            self.clock.callLater(0, self._recycle, box)
            return
        if self.stopped and self.sessions.get(box.session_id or "") is box:
            del self.sessions[box.session_id or ""]
            self._destroy(box)
            self.quota.forget(box.session_id)
        elif box.expired or self._expired(box):
            self._end_session(box)
        self._release_session_lock(box.session_id)

    def exchange(self, box: Box) -> Box:
        """A request that holds the anonymous ``box`` (its processes gone) gets a clean box in
        its place and keeps its turn (its slot): ``box`` is wiped and made ready again, as
        after a request.  For a request that runs one program after another, each of which
        must not see what the one before wrote (``sandboxd.jobs.versions``)."""
        if box.session_id is not None:
            raise ValueError(f"{box} belongs to a session: it is not exchanged")
        fresh = self._take_box(None)  # first: when it cannot be had, nothing has changed
        client = self.holder.pop(box.number, NO_CLIENT)
        self.busy.discard(box.number)
        self._taken.pop(box.number, None)
        box.in_use = False
        box.last_used = self.now()
        self.clock.callLater(0, self._recycle, box)
        return self._hand_out(fresh, client)

    def _release_session_lock(self, session_id: str) -> None:
        """Let the session's next request go; forget the lock when nobody waits for it."""
        lock = self.session_locks.get(session_id)
        if lock is None:
            return
        lock.release()
        if not lock.locked and not lock.waiting:
            del self.session_locks[session_id]
            self.quota.forget(session_id)

    def _recycle(self, box: Box) -> None:
        """Wipe a used anonymous box and keep it ready (or drop it when enough are)."""
        if self.stopped or len(self.ready) >= self.settings.boxes:
            self._destroy(box)
            return
        try:
            self.driver.wipe_box(box, self.settings.disk_mb)
        except Exception:
            log.failure("wiping {box}; dropping it", box=box)
            self._destroy(box)
            return
        box.runs = 0
        self._make_ready(box)

    # -- sessions --------------------------------------------------------------------------

    def _expired(self, box: Box) -> bool:
        return self.quota.expired(box, self.now())

    def session_expires_in(self, box: Box) -> float:
        """Seconds from now until the session of ``box`` expires (``SessionQuota``)."""
        return self.quota.expires_in(box, self.now())

    def _end_session(self, box: Box) -> None:
        if self.sessions.get(box.session_id or "") is box:
            del self.sessions[box.session_id or ""]
        self._destroy(box)
        if box.session_id is not None:
            self.quota.forget(box.session_id)
        log.info("session {session} ended; {box} removed", session=box.session_id, box=box)

    def cleanup(self) -> None:
        """Expire sessions: idle past their time, or alive past their maximum age."""
        for box in list(self.sessions.values()):
            try:
                if not self._expired(box):
                    continue
                if box.in_use:
                    box.expired = True  # ends when its request does
                else:
                    self._end_session(box)
            except Exception:
                log.failure("expiring {box}", box=box)
