"""Prometheus metrics and the health check, served by ``--metrics ENDPOINT``.

``/metrics`` is the Prometheus text format from the daemon's own registry (not the process-wide
default one, so two daemons in one test process never mix).  It is rendered in the reactor
thread, not in a thread pool as ``prometheus_client.twisted.MetricsResource`` would: the
gauges read the pool's live state, which only the reactor thread may touch.

``/healthz`` answers 200 when a box can run a program right now and 503 otherwise (and from
the moment of a SIGTERM: a balancer stops sending work, see ``--drain-time``); see
``sandboxd.service.health`` for what is checked.  Both name the daemon (``--node-name``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from twisted.internet import defer
from twisted.web import resource, server

from sandboxd.jobs.metrics import Metrics

if TYPE_CHECKING:
    from sandboxd.jobs.runtime import Runtime

def watch(metrics: Metrics, runtime: Runtime, connections: Callable[[], int]) -> None:
    """Have ``metrics`` read the live state (pool, caches, ``connections()``) when scraped."""
    metrics.registry.register(_DaemonState(runtime, connections))


class _DaemonState:
    """Gauges and counters read from the runtime when scraped."""

    def __init__(self, runtime: Runtime, connections: Callable[[], int]) -> None:
        self.rt = runtime
        self.connections = connections

    def describe(self) -> list[Any]:
        return []  # no collect() at registration: the daemon is not started yet

    def collect(self) -> Iterator[Any]:
        pool, stats = self.rt.pool, self.rt.stats
        yield GaugeMetricFamily("sandboxd_queue_length", "Requests waiting for a box",
                                value=pool.waiting)
        yield GaugeMetricFamily("sandboxd_busy_boxes", "Boxes running a request",
                                value=pool.running)
        yield GaugeMetricFamily("sandboxd_boxes", "Boxes that may run at once (--boxes)",
                                value=pool.settings.boxes)
        yield GaugeMetricFamily("sandboxd_sessions", "Live sessions (each holds a box)",
                                value=len(pool.sessions))
        yield GaugeMetricFamily(
            "sandboxd_session_box_memory_bytes", "Memory session boxes' files may hold "
            "together now (their reserved sizes; bound: --max-box-memory-mb)",
            value=pool.quota.memory_mb * 1024 * 1024)
        yield GaugeMetricFamily("sandboxd_connections", "Open client connections",
                                value=self.connections())
        cache = CounterMetricFamily(
            "sandboxd_build_cache", "Build lookups in the binary cache: hit (no build), shared "
            "(waited for an identical build in flight), miss (built)", labels=["result"])
        for result, key in (("hit", "cache_hits"), ("shared", "cache_shared"),
                            ("miss", "cache_misses")):
            cache.add_metric([result], stats.get(key, 0))
        yield cache
        held = self.rt.held_builds
        if held is not None:
            builds = CounterMetricFamily(
                "sandboxd_held_builds", "Builds launched ahead for ready boxes: used by a "
                "request, or abandoned (the request needed other settings or no build)",
                labels=["result"])
            builds.add_metric(["used"], held.used)
            builds.add_metric(["abandoned"], held.abandoned)
            yield builds
        binaries = self.rt.binaries
        yield GaugeMetricFamily("sandboxd_binary_cache_bytes", "Size of the binary cache",
                                value=binaries.total)


class _WithNode:
    """The registry with a ``node`` label (``--node-name``) on every sample, so that the
    series of several daemons behind one balancer never mix, whatever the scraper adds."""

    def __init__(self, registry: CollectorRegistry, node: str) -> None:
        self.registry = registry
        self.node = node

    def collect(self) -> Iterator[Any]:
        for family in self.registry.collect():
            family.samples = [s._replace(labels={"node": self.node, **s.labels})
                              for s in family.samples]
            yield family


class _MetricsPage(resource.Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics, node: str) -> None:
        super().__init__()
        self.metrics = metrics
        self.labelled = _WithNode(metrics.registry, node)

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.labelled)  # type: ignore[arg-type]


class _HealthPage(resource.Resource):
    isLeaf = True

    def __init__(self, check: Callable[[], defer.Deferred[tuple[bool, str]]], node: str) -> None:
        super().__init__()
        self.check = check
        self.node = node

    def render_GET(self, request: server.Request) -> Any:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")

        def answer(verdict: tuple[bool, str]) -> None:
            healthy, why = verdict
            request.setResponseCode(200 if healthy else 503)
            request.write(f"{'ok' if healthy else 'unhealthy'}: {why} "
                          f"(node {self.node})\n".encode())
            request.finish()

        def failed(failure: Any) -> None:
            answer((False, f"the health check failed: {failure.getErrorMessage()}"))

        d = self.check()
        d.addCallback(answer).addErrback(failed)
        request.notifyFinish().addErrback(lambda _: None)  # the client left: nothing to do
        return server.NOT_DONE_YET


def metrics_site(metrics: Metrics, health: Callable[[], defer.Deferred[tuple[bool, str]]],
                 node: str) -> server.Site:
    """The HTTP site for ``--metrics``: /metrics and /healthz (``health()``), nothing else;
    both name the daemon (``node``)."""
    root = resource.Resource()
    root.putChild(b"metrics", _MetricsPage(metrics, node))
    root.putChild(b"healthz", _HealthPage(health, node))
    site = server.Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site
