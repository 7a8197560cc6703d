"""One piece of work in flight per key; its outcome offered to those who asked meanwhile.

The contract of ``SingleFlight.run(key, work, shareable)``:

- The first caller for a key **leads**: ``work()`` is called at once, and the caller's Deferred
  fires with the work's outcome (its value, or its failure).
- Callers for the same key while that work runs **follow**: they wait.  When the work ends with
  a value that ``shareable(value)`` (the leader's predicate) accepts, every follower gets that
  value.  When it does not (a value not to share, or a failure), the first follower leads in
  turn: its own ``work`` runs and the others go on following it.  So followers lead themselves
  one at a time, in the order they came.
- Every wait can be cancelled: cancelling a follower's Deferred takes it out of the line at
  once (``CancelledError``) and its work never runs.  Once a caller leads it is no longer
  waiting but working: cancelling its Deferred cancels its work's Deferred (the caller may
  rather stop its work its own way and wait for the outcome).
- A key is in the table exactly while some work for it runs; an entry is never replaced by
  another, and nothing is left behind when the last caller is done.

Callers that must not share anything have different keys: the key is the caller's business
(for builds, every setting the build depends on).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

V = TypeVar("V")


class _Caller(Generic[V]):
    __slots__ = ("result", "running", "shareable", "work")

    def __init__(self, work: Callable[[], Any], shareable: Callable[[V], bool],
                 canceller: Callable[[_Caller[V]], None]) -> None:
        self.work = work
        self.shareable = shareable
        self.result: defer.Deferred[V] = defer.Deferred(lambda _: canceller(self))
        self.running: defer.Deferred[V] | None = None  # set while it leads


class SingleFlight(Generic[V]):
    """See the module's docstring for the contract."""

    def __init__(self) -> None:
        # key -> the callers following the work now running for that key (its leader aside)
        self._flights: dict[Hashable, deque[_Caller[V]]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        return len(self._flights)

    def followers(self, key: Hashable) -> int:
        line = self._flights.get(key)
        return 0 if line is None else len(line)

    def run(self, key: Hashable, work: Callable[[], Any],
            shareable: Callable[[V], bool] = lambda value: True) -> defer.Deferred[V]:
        """The outcome of ``work()``, or of the same key's work already in flight; see the
        module's docstring.  ``work`` returns a value or a Deferred (or raises)."""
        caller: _Caller[V] = _Caller(work, shareable, lambda c: self._cancel(key, c))
        line = self._flights.get(key)
        if line is None:
            self._flights[key] = deque()
            self._lead(key, caller)
        else:
            line.append(caller)
        return caller.result

    def _cancel(self, key: Hashable, caller: _Caller[V]) -> None:
        if caller.running is not None:
            caller.running.cancel()
            return
        line = self._flights.get(key)
        if line is not None and caller in line:
            line.remove(caller)
        # Deferred.cancel now fails caller.result with CancelledError.

    def _lead(self, key: Hashable, caller: _Caller[V]) -> None:
        caller.running = running = defer.maybeDeferred(caller.work)
        running.addBoth(self._ended, key, caller)

    def _ended(self, outcome: Any, key: Hashable, caller: _Caller[V]) -> None:
        line = self._flights[key]  # removed only here, once its last caller has an answer
        shared = not isinstance(outcome, Failure) and _accepts(caller.shareable, outcome)
        if shared:
            del self._flights[key]
            for follower in line:
                follower.result.callback(outcome)
        elif line:
            self._lead(key, line.popleft())  # the line stays, under its new leader
        else:
            del self._flights[key]
        if not caller.result.called:
            if isinstance(outcome, Failure):
                caller.result.errback(outcome)
            else:
                caller.result.callback(outcome)
        return None


def _accepts(shareable: Callable[[Any], bool], outcome: Any) -> bool:
    """A predicate that raises shares nothing (and the error is not lost)."""
    try:
        return bool(shareable(outcome))
    except Exception:
        log.failure("deciding whether an outcome can be shared")
        return False
