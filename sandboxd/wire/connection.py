"""One client connection: JSON lines in, events out.

Lines are split here rather than by ``LineReceiver`` so that an over-long line is answered with
a ``bad_request`` and skipped instead of dropping the connection.  Requests run concurrently;
their events interleave, each carrying its ``id``.  When the client shuts down its writing side
the connection finishes every request it has, then closes.  When the client goes away its
requests are cancelled.  When the client reads slowly, every child of the connection is paused
(its pipes are not read, so it blocks writing) until the client catches up.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

from twisted.internet import interfaces, protocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from sandboxd.limits import LimitPolicy
from sandboxd.status import Phase, Status
from sandboxd.wire.events import encode, final_event
from sandboxd.wire.hangup import HangupWatch
from sandboxd.wire.identity import client_identity
from sandboxd.wire.request import BadRequest, Control, Request, SourceLimits, parse_line

log = Logger()

SHUTDOWN_NOT_STARTED = "the server is shutting down; the request had not started"

# Unfinished lines up to this size never count against the pending-input budget.
SMALL_LINE = 16 * 1024
# Lines one connection gets handled per turn of the reactor; the rest wait for the next turn
# (its reading paused meanwhile), so that a connection pipelining thousands of lines takes
# the daemon's time turn by turn with every other connection instead of ~50 ms at a time.
LINES_PER_TURN = 16


@implementer(interfaces.IHalfCloseableProtocol, interfaces.IPushProducer)
class Connection(protocol.Protocol, TimeoutMixin):
    def __init__(self, factory: ConnectionFactory) -> None:
        self.factory = factory
        self.buffer = b""
        self.discarding = False
        self.jobs: dict[str, Submitted] = {}
        self.input_closed = False
        self.lost = False
        self.paused = False
        self.hangup: HangupWatch | None = None  # made at connectionMade
        self._pending_counted = 0  # this connection's share of factory.pending_input
        self.last_active = time.monotonic()  # the client's last line or byte
        self._client: str | None = None
        self._backlog = False  # complete lines left in the buffer for the next turn
        self.gone: Deferred[None] = Deferred()  # fires once the connection is lost

    # -- connection life -------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        self.transport.registerProducer(self, True)
        self.setTimeout(self.factory.idle_timeout)
        self.hangup = HangupWatch(self.transport, lambda: not self.lost and bool(self.jobs),
                                  self._hang_up)

    def connectionLost(self, reason: Any = None) -> None:
        self.buffer = b""
        self._count_pending()
        self.lost = True
        self.setTimeout(None)
        if self.hangup is not None:
            self.hangup.stop()
        self.factory.connections.discard(self)
        for job in list(self.jobs.values()):
            job.cancel("the client disconnected")
        if not self.gone.called:
            self.gone.callback(None)

    def readConnectionLost(self) -> None:
        self.input_closed = True
        for job in self.jobs.values():  # no stdin line can come any more
            job.close_stdin()
        if not self._backlog:
            self._input_ended()
        # else: the lines left are handled turn by turn first; the last one ends the input

    def _input_ended(self) -> None:
        """Every complete line has been handled and the client sends no more: what is left
        is its last line."""
        if self.buffer.strip() and not self.discarding:
            line, self.buffer = self.buffer, b""
            self._line(line)
            self._count_pending()
        self._close_if_done()
        if self.jobs and not self.lost and self.hangup is not None:
            self.hangup.start(getattr(self.factory.runtime, "reactor", None))

    def _hang_up(self) -> None:
        log.info("the client went away; cancelling its requests")
        self.connectionLost()
        self.transport.abortConnection()

    def writeConnectionLost(self) -> None:
        self.connectionLost()
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        if self.jobs:
            self.resetTimeout()
            return
        log.info("closing an idle connection")
        self.transport.loseConnection()

    def _close_if_done(self) -> None:
        # Not while the transport holds us paused: its loseConnection would then wait for a
        # write that never comes (Twisted's doWrite, its buffer empty, resumes a paused
        # producer instead of closing), and the client would never see the end.  The
        # transport's resumeProducing closes it.
        if (self.input_closed and not self.jobs and not self.lost and not self._backlog
                and not self.paused):
            self.transport.loseConnection()

    # -- input -----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.last_active = time.monotonic()
        self.buffer += data
        try:
            self._split_lines()
        finally:
            self._count_pending()

    def _count_pending(self) -> None:
        """Keep the factory's total of unfinished input of all connections up to date."""
        self.factory.pending_input += len(self.buffer) - self._pending_counted
        self._pending_counted = len(self.buffer)

    def _over_pending_budget(self) -> bool:
        """Hundreds of connections each holding most of a maximum-length line would hold
        gigabytes; past the budget, the big unfinished line that pushes over it is refused."""
        total = self.factory.pending_input + len(self.buffer) - self._pending_counted
        return len(self.buffer) > SMALL_LINE and total > self.factory.max_pending_input

    def _split_lines(self) -> None:
        limit = self.factory.max_line_bytes
        handled = 0
        while True:
            if self._backlog:
                return  # a turn is scheduled: lines are handled in order, there
            end = self.buffer.find(b"\n")
            if end >= 0 and handled >= self.factory.lines_per_turn:
                self._next_turn()
                return
            if end < 0:
                if len(self.buffer) > limit:
                    if not self.discarding:
                        self._refuse_long_line()
                    self.discarding = True
                    self.buffer = b""
                elif not self.discarding and self._over_pending_budget():
                    self.send(final_event(
                        None, Status.BAD_REQUEST,
                        "the server holds too much unfinished input from its clients; this "
                        "line was skipped (send it again later)", Phase.QUEUE))
                    self.discarding = True
                    self.buffer = b""
                elif self.discarding:
                    self.buffer = b""
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 1:]
            if self.discarding:
                self.discarding = False
                continue
            handled += 1
            if len(line) > limit:
                self._refuse_long_line()
                continue
            self._line(line)
            if self.lost:
                return

    def _next_turn(self) -> None:
        """More lines than one turn's: stop reading and handle the rest on the next turn."""
        self._backlog = True
        self._reading(False)
        self.factory.reactor.callLater(0, self._take_turn)

    def _take_turn(self) -> None:
        self._backlog = False
        if self.lost:
            return
        if self.paused:  # the client is not reading its answers: resumeProducing goes on
            self._backlog = True
            return
        try:
            self._split_lines()
        finally:
            self._count_pending()
        if self._backlog:
            return
        if self.input_closed:
            self._input_ended()
        else:
            self._reading(True)

    def _refuse_long_line(self) -> None:
        self.send(final_event(
            None, Status.BAD_REQUEST,
            f"the line is longer than this server's maximum ({self.factory.max_line_bytes} "
            "bytes); it was skipped",
            Phase.QUEUE,
        ))

    def _line(self, line: bytes) -> None:
        request = triage(self.factory, line, self.jobs)
        if request is None:
            return
        if isinstance(request, dict):
            self.send(request)  # answered at once
            return
        if isinstance(request, Control):
            self._control(request)
            return
        job = self.factory.requests.submit(request, self.send, self.client)
        self.jobs[request.id] = job
        if self.paused:
            job.pause()
        job.start().addBoth(self._job_done, request.id, job)

    def _control(self, control: Control) -> None:
        """stdin and cancel lines act on a running request and are not answered when they
        work; when they cannot, the answer is a ``bad_request`` with ``id`` null (the named
        request goes on and still ends with its own final event) naming it in ``for_id``."""
        refused = apply_control(self.jobs, control, self.factory.sources.max_stdin_bytes)
        if refused is not None:
            self.send(refused)

    def _job_done(self, result: Any, request_id: str, job: Submitted) -> None:
        if self.jobs.get(request_id) is job:
            del self.jobs[request_id]
        self._close_if_done()

    @property
    def client(self) -> str:
        """Who this connection's requests count as, for the shares of the queue and of the
        sessions (``sandboxd.boxes.pool``): the client certificate where one was verified (an
        ``ssl:`` listener with ``--client-ca``), else the peer's address with
        ``--client-identity=address`` (IPv6: its /64), else this connection alone.  Asked at
        the first request, after any TLS handshake."""
        if self._client is None:
            self._client = client_identity(
                self.transport, self.factory.client_identity == "address",
                lambda: f"conn:{next(self.factory.serials)}")
        return self._client

    # -- output ----------------------------------------------------------------------------

    def send(self, event: dict[str, Any]) -> None:
        node = getattr(self.factory.runtime, "node", None)
        if node is not None and event.get("done"):
            event.setdefault("node", node)  # refused lines too: which daemon answered
        if not self.lost:
            if self.hangup is not None:
                self.hangup.wrote()
            self.transport.write(encode(event))

    # -- IPushProducer: the transport asks us to hold output while the client is slow -----

    def pauseProducing(self) -> None:
        self.paused = True
        for job in self.jobs.values():
            job.pause()
        # Stop reading the client's lines too: each would be answered (a bad_request, a
        # final event) into a buffer the client is not emptying.
        self._reading(False)

    def resumeProducing(self) -> None:
        self.paused = False
        if self._backlog:  # lines were left waiting for the client to read: go on with them
            self.factory.reactor.callLater(0, self._take_turn)
        else:
            self._reading(True)
        for job in list(self.jobs.values()):
            job.resume()
        self._close_if_done()

    def _reading(self, on: bool) -> None:
        if self.lost or self.input_closed:
            return
        try:
            if on:
                self.transport.resumeProducing()
            else:
                self.transport.pauseProducing()
        except Exception:  # a transport that cannot pause its reading
            log.failure("pausing the reading of a connection")

    def stopProducing(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel("the client disconnected")


def triage(factory: ConnectionFactory, line: bytes,
           running: Collection[str]) -> Request | Control | dict[str, Any] | None:
    """What one line asks for, by the rules every face shares (the line connection, the
    WebSocket): None for a blank line; the final event that answers it at once (refused,
    ``version``, a duplicate of a running id, a shutdown); else the ``Control`` to apply or
    the ``Request`` to submit.  ``running``: the ids of the face's requests still running."""
    if not line.strip():
        return None
    runtime = factory.runtime
    try:
        request = parse_line(line, factory.policy, factory.sources,
                             runtime.toolchains if runtime is not None else ())
    except BadRequest as e:
        return final_event(e.request_id, Status.BAD_REQUEST, e.message, Phase.QUEUE, **e.fields)
    if isinstance(request, Control):
        return request
    if request.type == "version":
        return factory.requests.version_event(request.id)
    if request.id in running:
        # id null (the running request with that id has not ended), for_id names it.
        return final_event(
            None, Status.BAD_REQUEST,
            f"a request with id {request.id!r} is still running on this connection",
            Phase.QUEUE, for_id=request.id, for_type=request.type)
    if factory.shutting_down:
        return final_event(request.id, Status.CANCELLED, SHUTDOWN_NOT_STARTED, Phase.QUEUE)
    return request


def apply_control(jobs: dict[str, Submitted], control: Control,
                  max_stdin_bytes: int) -> dict[str, Any] | None:
    """A ``stdin`` or ``cancel`` line, applied to the running request it names among ``jobs``
    (one connection's, or one WebSocket's); the ``bad_request`` event when it cannot be."""
    job = jobs.get(control.target)
    problem = None
    if job is None:
        problem = f"no request with id {control.target!r} is running on this connection"
    elif control.type == "cancel":
        job.cancel()
    elif control.data:
        problem = job.write_stdin(control.data, max_stdin_bytes)
    if job is not None and control.eof and problem is None:
        job.close_stdin()
    if problem is None:
        return None
    return final_event(None, Status.BAD_REQUEST, problem, Phase.QUEUE,
                       for_id=control.target, for_type=control.type)


class Submitted(Protocol):
    """A submitted request as a face sees it (``sandboxd.jobs.submit.Handle`` is one)."""

    def start(self) -> Deferred[None]: ...
    def cancel(self, reason: str = ...) -> None: ...
    def write_stdin(self, data: bytes, limit: int) -> str | None: ...
    def close_stdin(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class Submit(Protocol):
    """The seam every face runs requests through (``sandboxd.jobs.submit.Requests`` is one):
    the wire is below the jobs, so it names only what it calls."""

    runtime: Any  # the toolchains a request may name, the reactor

    def submit(self, request: Request, emit: Callable[[dict[str, Any]], None],
               client: str | None = None) -> Submitted: ...
    def version_event(self, request_id: str | None) -> dict[str, Any]: ...


class ConnectionFactory(protocol.Factory):
    protocol = Connection  # type: ignore[assignment]

    def __init__(
        self,
        requests: Submit,
        policy: LimitPolicy,
        sources: SourceLimits | None = None,
        max_line_bytes: int = 2 * 1024 * 1024,
        idle_timeout: float | None = 600,
        max_pending_input: int = 128 * 1024 * 1024,
        max_connections: int = 4096,
        client_identity: str = "connection",
        lines_per_turn: int = LINES_PER_TURN,
        reactor: Any = None,
    ) -> None:
        self.requests = requests  # every request in flight, HTTP ones too
        runtime = self.runtime
        self.lines_per_turn = lines_per_turn
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = runtime.reactor if runtime is not None else default_reactor
        self.reactor = reactor
        self.client_identity = client_identity  # "connection" or "address"
        self.serials = itertools.count(1)
        self.max_connections = max_connections
        self.max_pending_input = max_pending_input
        self.pending_input = 0  # bytes of unfinished lines held, all connections together
        self.policy = policy
        self.sources = sources or SourceLimits()
        self.max_line_bytes = max_line_bytes
        self.idle_timeout = idle_timeout
        self.connections: set[Connection] = set()
        self.shutting_down = False  # set on SIGTERM: new requests are refused

    @property
    def runtime(self) -> Any:
        return self.requests.runtime if self.requests is not None else None

    def buildProtocol(self, addr: Any) -> Connection:
        if len(self.connections) >= self.max_connections:
            self._shed_idle()
        return Connection(self)

    def _shed_idle(self) -> None:
        """At ``--max-connections``, close the connection idle the longest (no request
        running, nothing sent for longest) to make room: idle connections by the thousand
        would otherwise take every descriptor and keep real requests out."""
        idle = [c for c in self.connections if not c.jobs and not c.lost]
        if not idle:
            return  # every connection is busy: requests are bounded by the queue anyway
        victim = min(idle, key=lambda c: c.last_active)
        log.info("{n} connections: closing the one idle longest", n=len(self.connections))
        victim.connectionLost()
        victim.transport.abortConnection()
