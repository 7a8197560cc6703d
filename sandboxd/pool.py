"""The box pool: how many boxes run at once, who waits, which box a request gets.

A ``DeferredSemaphore`` of ``--boxes`` lets that many requests run at once; the rest wait first
in, first out, up to ``--max-queue``.  A request with a ``session_id`` gets that session's own
box (same uid, same files) and requests of one session take turns; a request without one gets a
box that holds no file of any earlier request.  Used anonymous boxes are wiped after their
request, off the next request's path, and kept ready.  A ``LoopingCall`` expires idle and old
sessions; one failing step is logged and never stops it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sandboxd.box import Box
from sandboxd.drivers.base import Driver

log = Logger()

MAX_BOX_NUMBER = 4000


class QueueFull(Exception):
    """No place to wait: the queue (or the session table) is full."""


@dataclass
class PoolSettings:
    boxes: int
    max_queue: int = 100
    max_sessions: int = 256
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
        self.slots = defer.DeferredSemaphore(settings.boxes)
        self.sessions: dict[str, Box] = {}
        self.session_locks: dict[str, defer.DeferredLock] = {}
        self.ready: list[Box] = []
        self.busy: set[int] = set()
        self._taken: dict[int, Box] = {}  # the boxes requests hold now, by number
        self.waiting = 0
        self._numbers_in_use: set[int] = set()
        self.stopped = False
        self._top_up_pending = False
        self._cleanup = LoopingCall(self.cleanup)
        self._cleanup.clock = clock
        # Told when an anonymous box becomes ready (again, after each wipe), and when any box
        # is destroyed: what is prepared ahead for a box (``sandboxd.heldbuild``) dies with it.
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

    @property
    def running(self) -> int:
        return len(self.busy)

    # -- boxes -----------------------------------------------------------------------------

    def _new_box(self, session_id: str | None = None) -> Box:
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
            self.driver.create_box(box, self.settings.disk_mb)
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

    def acquire(self, session_id: str | None) -> defer.Deferred[Box]:
        """A box for one request; cancel the Deferred to stop waiting."""
        if self.waiting >= self.settings.max_queue:
            return defer.fail(QueueFull(f"the queue is full ({self.settings.max_queue} waiting)"))
        if (
            session_id is not None
            and session_id not in self.sessions
            and session_id not in self.session_locks
            and self._session_count() >= self.settings.max_sessions
        ):
            self.cleanup()
            if self._session_count() >= self.settings.max_sessions:
                return defer.fail(QueueFull(
                    f"too many live sessions ({self.settings.max_sessions})"
                ))
        self.waiting += 1
        return defer.ensureDeferred(self._acquire(session_id))

    def _session_count(self) -> int:
        """Live sessions, and new ones whose first request still waits: each will hold a box."""
        return len(self.sessions.keys() | self.session_locks.keys())

    async def _acquire(self, session_id: str | None) -> Box:
        try:
            if session_id is not None:
                await self.session_locks.setdefault(session_id, defer.DeferredLock()).acquire()
            try:
                if session_id is None and self.slots.tokens == 0:
                    self._top_up_soon()
                await self.slots.acquire()
            except BaseException:
                if session_id is not None:
                    self._release_session_lock(session_id)
                raise
        finally:
            self.waiting -= 1
        try:
            box = self._take_box(session_id)
        except BaseException:
            self.slots.release()
            if session_id is not None:
                self._release_session_lock(session_id)
            raise
        box.in_use = True
        box.last_used = self.now()
        box.runs += 1
        self.busy.add(box.number)
        self._taken[box.number] = box
        return box

    def _take_box(self, session_id: str | None) -> Box:
        if session_id is not None:
            box = self.sessions.get(session_id)
            if box is None:
                box = self._new_box(session_id)
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
        self.slots.release()
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
        elif box.expired or self._expired(box):
            self._end_session(box)
        self._release_session_lock(box.session_id)

    def _release_session_lock(self, session_id: str) -> None:
        """Let the session's next request go; forget the lock when nobody waits for it."""
        lock = self.session_locks.get(session_id)
        if lock is None:
            return
        lock.release()
        if not lock.locked and not lock.waiting:
            del self.session_locks[session_id]

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
        now = self.now()
        return (
            now - box.last_used > self.settings.session_idle_s
            or now - box.created > self.settings.session_max_age_s
        )

    def _end_session(self, box: Box) -> None:
        if self.sessions.get(box.session_id or "") is box:
            del self.sessions[box.session_id or ""]
        self._destroy(box)
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
