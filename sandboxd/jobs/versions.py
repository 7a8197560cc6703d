"""A run on several Go toolchains (``"go": ["old", "default"]``): the program is built and run
on each named toolchain, one after another, each in a clean box; one final event says how each
ended and whether their outputs differ.

Each toolchain's turn is a ``Job`` of its own (a *part*: the request with ``go`` set to that one
name), so it is built, cached, limited, judged (``jobs/verdict.py``) and logged exactly as a
request on that toolchain alone.  Its events go to the client with ``go`` naming the toolchain;
its final event is kept, not sent.  The request holds one box turn (slot) for all its parts:
the first part waits for a box like any request, each later part gets a clean box in exchange
for the used one (``BoxPool.exchange``), so no part sees what another wrote and none waits in the
queue again.  The request's own final event is made here, from the parts' (``final``).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sandboxd.boxes.box import Box
from sandboxd.boxes.pool import NO_CLIENT
from sandboxd.jobs import verdict
from sandboxd.jobs.job import Emit, Job
from sandboxd.jobs.runtime import Runtime
from sandboxd.status import Phase, Status
from sandboxd.wire.events import final_event
from sandboxd.wire.request import Request

log = Logger()

# A part's final event fields that its entry in ``results`` keeps (with ``go`` and ``version``).
RESULT_FIELDS = ("status", "message", "phase", "exit_code", "signal", "time_ms", "wall_ms",
                 "memory_kb", "build_ms", "cached", "output_bytes", "tests_passed",
                 "tests_failed")
# What the request's final event takes from the part that decides its status.
DECIDER_FIELDS = ("phase", "exit_code", "signal", "time_ms", "wall_ms", "memory_kb",
                  "build_ms", "cached")
# Statuses after which the toolchains whose turn has not come are not run.
STOPPING = (Status.CANCELLED, Status.QUEUE_FULL)


@dataclass
class Part:
    """One toolchain's turn: its name, its output's digests, its final event once it ended."""

    name: str
    version: str
    digests: dict[str, Any] = field(
        default_factory=lambda: {"stdout": hashlib.sha256(), "stderr": hashlib.sha256()})
    final: dict[str, Any] | None = None

    def feed(self, event: dict[str, Any]) -> None:
        """An output event's exact bytes (``output_base64`` where present, else the UTF-8 of
        ``output``), as a client rebuilds them."""
        raw = event.get("output_base64")
        data = base64.b64decode(raw) if raw else event.get("output", "").encode("utf-8")
        self.digests[event.get("stream", "stdout")].update(data)

    def result(self) -> dict[str, Any]:
        """This toolchain's entry in the final event's ``results``."""
        entry: dict[str, Any] = {"go": self.name, "version": self.version}
        final = self.final or {}
        entry.update((k, final[k]) for k in RESULT_FIELDS if k in final)
        if final.get("ran", True):
            entry["stdout_sha256"] = self.digests["stdout"].hexdigest()
            entry["stderr_sha256"] = self.digests["stderr"].hexdigest()
        return entry


def not_run(status: Status, message: str) -> dict[str, Any]:
    """The final event of a part whose turn never came (the request ended first)."""
    return {**final_event(None, status, f"not run: {message}", Phase.QUEUE), "ran": False}


def final(request_id: str, parts: list[Part], cancelled: bool,
          node: str | None) -> dict[str, Any]:
    """The request's one final event, from its parts' (every part has its ``final``).

    Status: the deciding toolchain's (``verdict.deciding_toolchain``: ``cancelled`` when the
    request was cancelled; else ``ok`` when every toolchain gave ``ok``; else the first one, in
    the request's order, that did not), its message prefixed by the toolchain's name and
    version (not a cancel's or a full queue's).  ``phase``, ``exit_code``, ``signal``, the
    measures, ``build_ms`` and ``cached`` are that toolchain's (all ``ok``: the last one's);
    ``output_bytes`` is the sum; ``outputs_differ`` compares, byte for byte, the stdout and
    the stderr of every part that ran."""
    finals = [p.final or {} for p in parts]
    statuses = [Status(f.get("status", Status.INTERNAL_ERROR)) for f in finals]
    i = verdict.deciding_toolchain(statuses, cancelled)
    decider, status = finals[i], statuses[i]
    message = str(decider.get("message", ""))
    if status is Status.OK:
        message = f"ok on every toolchain ({', '.join(p.name for p in parts)})"
    elif status not in STOPPING:
        message = f"{parts[i].name} ({parts[i].version}): {message}"
    ran = [p for p, f in zip(parts, finals, strict=True) if f.get("ran", True)]
    fields: dict[str, Any] = {k: decider[k] for k in DECIDER_FIELDS if k in decider}
    fields.update(
        output_bytes=sum(f.get("output_bytes", 0) for f in finals),
        go=[p.version for p in parts],
        results=[p.result() for p in parts],
        outputs_differ=len({(p.digests["stdout"].digest(), p.digests["stderr"].digest())
                            for p in ran}) > 1,
    )
    if node is not None:
        fields["node"] = node
    phase = Phase(fields.pop("phase", Phase.QUEUE))
    return final_event(request_id, status, message, phase, **fields)


class Versions:
    """Runs a ``Request`` naming several toolchains; like a ``Job`` to the faces and the daemon
    (start, cancel, stdin, pause, ``box``, ``phase``), and it sends exactly one final event."""

    def __init__(self, runtime: Runtime, request: Request, emit: Emit,
                 client: str = NO_CLIENT) -> None:
        self.rt = runtime
        self.request = request
        self.emit = emit
        self.client = client
        self.parts = [Part(name, runtime.toolchains[name].version)
                      for name in request.toolchains]
        self.part: Job | None = None  # the part running now
        self.box: Box | None = None  # the box of the part running now, held between parts
        self.finished = False
        self.cancel_reason: str | None = None
        self.paused = False
        self._ended_phase = Phase.QUEUE

    @property
    def phase(self) -> Phase:
        return self.part.phase if self.part is not None else self._ended_phase

    # -- control from the connection, passed to the part running now ----------------------

    def start(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._main())

    def cancel(self, reason: str = "cancelled by the client") -> None:
        if self.finished or self.cancel_reason is not None:
            return
        self.cancel_reason = reason
        if self.part is not None:
            self.part.cancel(reason)

    def write_stdin(self, data: bytes, limit: int) -> str | None:
        return (f"request {self.request.id!r} runs on several toolchains and takes its input "
                "from 'stdin' only")

    def close_stdin(self) -> None:
        pass

    def pause(self) -> None:
        self.paused = True
        if self.part is not None:
            self.part.pause()

    def resume(self) -> None:
        self.paused = False
        if self.part is not None:
            self.part.resume()

    # -- boxes for the parts (``Job.boxes``) ----------------------------------------------

    def acquire(self, session_id: str | None, client: str = NO_CLIENT,
                disk_mb: int | None = None) -> defer.Deferred[Box]:
        """The first part waits for a box; each later one gets a clean one for the used."""
        if self.box is not None:
            self.box = self.rt.pool.exchange(self.box)
            return defer.succeed(self.box)
        waiting = self.rt.pool.acquire(None, client, disk_mb)

        def got(box: Box) -> Box:
            self.box = box
            return box

        return waiting.addCallback(got)

    def release(self, box: Box) -> None:
        """A part ended: the box stays with the request until its last part (``_let_go``)."""

    # -- the way through -------------------------------------------------------------------

    async def _main(self) -> None:
        try:
            stop: dict[str, Any] | None = None
            for part in self.parts:
                if stop is None and self.cancel_reason is not None:
                    stop = not_run(Status.CANCELLED, self.cancel_reason)
                if stop is not None:
                    part.final = stop
                    continue
                await self._run_part(part)
                assert part.final is not None
                status = Status(part.final["status"])
                if status in STOPPING:
                    stop = not_run(status, str(part.final["message"]))
            self._finish()
        except Exception as e:
            log.failure("request {id} failed", id=self.request.id)
            if not self.finished:
                self.finished = True
                self.emit(final_event(self.request.id, Status.INTERNAL_ERROR,
                                      f"internal error: {type(e).__name__}", self.phase,
                                      node=self.rt.node))
        finally:
            self._let_go()

    async def _run_part(self, part: Part) -> None:
        def emit(event: dict[str, Any]) -> None:
            if event.get("done"):
                part.final = event
                return
            part.feed(event)
            event["go"] = part.name
            self.emit(event)

        request = replace(self.request, go=part.name, toolchains=())
        job = Job(self.rt, request, emit, self.client, boxes=self)
        if self.paused:
            job.pause()
        self.part = job
        try:
            await job.start()  # its final event came (a Job always sends one), its box is back
        finally:
            self._ended_phase = job.phase
            self.part = None
        if part.final is None:  # never: a Job always ends with a final event
            part.final = final_event(None, Status.INTERNAL_ERROR, "internal error: no outcome",
                                     job.phase)

    def _finish(self) -> None:
        self.finished = True
        event = final(self.request.id, self.parts, self.cancel_reason is not None,
                      self.rt.node)
        self._ended_phase = Phase(event["phase"])
        self.emit(event)

    def _let_go(self) -> None:
        if self.box is not None:
            box, self.box = self.box, None
            try:
                self.rt.pool.release(box)
            except Exception:
                log.failure("giving back {box} after request {id}", box=box,
                            id=self.request.id)
