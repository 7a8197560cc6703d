"""What the request path records for Prometheus: requests by final status, build and run wall
times, output bytes.  The daemon's live state is read at scrape time (``sandboxd.service.metrics``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Builds take from ~0.1 s (warm cache) to the build limit; runs from ~2 ms to the run limit.
BUILD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
RUN_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60)


class Metrics:
    """What the request path records; the pool's state is read at scrape time instead."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sandboxd_requests", "Requests ended, by final status",
                                ["status"], registry=self.registry)
        self.build_seconds = Histogram("sandboxd_build_seconds",
                                       "Wall time of builds run in a box (cache hits excluded)",
                                       buckets=BUILD_BUCKETS, registry=self.registry)
        self.run_seconds = Histogram("sandboxd_run_seconds", "Wall time of program runs",
                                     buckets=RUN_BUCKETS, registry=self.registry)
        self.output_bytes = Counter("sandboxd_output_bytes",
                                    "Bytes of program and compiler output streamed to clients",
                                    registry=self.registry)

    def request_ended(self, status: str, output_bytes: int) -> None:
        self.requests.labels(status=status).inc()
        self.output_bytes.inc(output_bytes)
