"""The fair slots a pool hands out: how many requests run at once, and which waiting client gets
a freed slot (the one holding the fewest, then the one served longest ago)."""

from __future__ import annotations

import itertools
from collections import deque

from twisted.internet import defer


class QueueFull(Exception):
    """No place to wait: the queue, the client's share of it, the session table, the client's
    share of that, or the memory session boxes may hold is full."""


class FairSlots:
    """``tokens`` slots; a freed one goes to the waiting client that holds the fewest, among
    those to the one served longest ago (round-robin), each client's own waiters first in,
    first out."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.queues: dict[str, deque[defer.Deferred]] = {}  # clients with waiters: theirs
        self.held: dict[str, int] = {}  # slots each client holds now
        self.served: dict[str, int] = {}  # when each client (waiting or holding) got one last
        self._turns = itertools.count()

    def waiting(self, client: str) -> int:
        return len(self.queues.get(client, ()))

    def acquire(self, client: str) -> defer.Deferred:
        if self.tokens > 0 and not self.queues:
            self._give(client)
            return defer.succeed(self)
        d: defer.Deferred = defer.Deferred(lambda d: self._forget(client, d))
        self.queues.setdefault(client, deque()).append(d)
        return d

    def _give(self, client: str) -> None:
        self.tokens -= 1
        self.held[client] = self.held.get(client, 0) + 1
        self.served[client] = next(self._turns)

    def _forget(self, client: str, d: defer.Deferred) -> None:
        queue = self.queues.get(client)
        if queue is not None and d in queue:
            queue.remove(d)
            if not queue:
                del self.queues[client]
                self._settle(client)

    def _settle(self, client: str) -> None:
        """A client that neither waits nor holds a slot has no turn to remember."""
        if client not in self.queues and client not in self.held:
            self.served.pop(client, None)

    def release(self, client: str) -> None:
        self.tokens += 1
        left = self.held.get(client, 0) - 1
        if left > 0:
            self.held[client] = left
        else:
            self.held.pop(client, None)
        while self.tokens > 0 and self.queues:
            nxt = min(self.queues,
                      key=lambda c: (self.held.get(c, 0), self.served.get(c, -1)))
            queue = self.queues[nxt]
            d = queue.popleft()
            if not queue:
                del self.queues[nxt]
            self._give(nxt)
            d.callback(self)
        self._settle(client)

    def push_out(self, client: str, has: int, reason: str) -> bool:
        """Refuse (``QueueFull``) the newest waiter of the client with the most waiting when
        it has more than one more than ``client``, which has ``has``: its place goes to
        ``client``.  False when no client waits more than that."""
        if not self.queues:
            return False
        heaviest = max(self.queues, key=lambda c: len(self.queues[c]))
        queue = self.queues[heaviest]
        if heaviest == client or len(queue) <= has + 1:
            return False
        d = queue.pop()
        if not queue:
            del self.queues[heaviest]
            self._settle(heaviest)
        d.errback(QueueFull(reason))
        return True
