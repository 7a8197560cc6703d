"""The one way a request gets run: ``Requests.submit(request, emit, client) -> Handle``.

Every face of the daemon — the line protocol (``sandboxd.wire.connection``), HTTP and WebSocket
(``sandboxd.web``) — turns what its client sent into a checked ``Request`` and submits it here;
none of them makes a ``Job`` itself.  ``Requests`` keeps every request in flight, whichever face
it came from, so a shutdown finds and ends them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from sandboxd import __version__
from sandboxd.jobs.job import Job, Runtime
from sandboxd.jobs.versions import Versions
from sandboxd.status import Phase, Status
from sandboxd.wire.events import final_event
from sandboxd.wire.request import Request

Emit = Callable[[dict[str, Any]], None]


class Handle:
    """A submitted request: start it once, then cancel it, feed its stdin, pause or resume it."""

    def __init__(self, requests: Requests, job: Job | Versions) -> None:
        self._requests = requests
        self.job = job
        self.done: defer.Deferred[None] | None = None

    @property
    def request(self) -> Request:
        return self.job.request

    @property
    def phase(self) -> Phase:
        return self.job.phase

    @property
    def box(self) -> Any:
        return self.job.box

    @property
    def finished(self) -> bool:
        return self.job.finished

    def start(self) -> defer.Deferred[None]:
        """Run the request; the Deferred fires after its final event, once its box is back."""
        live = self._requests.live
        self.done = self.job.start()
        live[self.job] = self.done
        self.done.addBoth(lambda result: (live.pop(self.job, None), result)[1])
        return self.done

    def cancel(self, reason: str = "cancelled by the client") -> None:
        self.job.cancel(reason)

    def write_stdin(self, data: bytes, limit: int) -> str | None:
        return self.job.write_stdin(data, limit)

    def close_stdin(self) -> None:
        self.job.close_stdin()

    def pause(self) -> None:
        self.job.pause()

    def resume(self) -> None:
        self.job.resume()


class Requests:
    """Every request in flight, from every face of the daemon."""

    def __init__(self, runtime: Runtime | None) -> None:
        self.runtime = runtime
        # Every request started and not ended, with the Deferred that fires at its end.
        self.live: dict[Job | Versions, defer.Deferred[None]] = {}

    def submit(self, request: Request, emit: Emit, client: str | None = None) -> Handle:
        """A handle on ``request`` (not started yet: register it, then ``start()``).
        ``client``: who the request counts as where the queue is shared out (None: its own)."""
        kwargs = {"client": client} if client is not None else {}
        if request.toolchains:  # "go" as a list: a run on each (sandboxd.jobs.versions)
            return Handle(self, Versions(self.runtime, request, emit, **kwargs))
        return Handle(self, Job(self.runtime, request, emit, **kwargs))

    def ended(self, seconds: float, clock: Any) -> defer.Deferred[bool]:
        """Fires True once every request in flight now has ended, False after ``seconds``
        (the requests go on: the wait gives up, it cancels nothing)."""
        return all_fired(list(self.live.values()), seconds, clock)

    def version_event(self, request_id: str | None) -> dict[str, Any]:
        """The answer to a ``version`` request (no box needed)."""
        runtime = self.runtime
        return final_event(
            request_id, Status.OK, "versions", Phase.QUEUE, sandboxd=__version__.public(),
            go={name: tc.version for name, tc in runtime.toolchains.items()},
            default_go=runtime.toolchain.name,
        )


def all_fired(deferreds: list[defer.Deferred[Any]], seconds: float,
              clock: Any) -> defer.Deferred[bool]:
    """True once every one of ``deferreds`` has fired, False after ``seconds``: the wait gives
    up, it never cancels the Deferreds it waits on (their results pass through unchanged)."""
    every: defer.Deferred[bool] = defer.Deferred()
    left = len(deferreds)

    def one_ended(result: Any) -> Any:
        nonlocal left
        left -= 1
        if left == 0 and not every.called:
            every.callback(True)
        return result

    if not deferreds:
        every.callback(True)
        return every
    for d in deferreds:
        d.addBoth(one_ended)
    if not every.called:
        every.addTimeout(seconds, clock, onTimeoutCancel=lambda result, timeout: False)
    return every
