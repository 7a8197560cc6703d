"""Third-party Go modules, when the operator allows them (off by default).

Two ways, chosen by the operator:

- ``--gomodcache DIR``: a module cache the operator filled (``go mod download`` with
  ``GOMODCACHE=DIR``).  Builds read it through a read-only mount and resolve versions from its
  ``cache/download`` tree; nothing is downloaded, no box has network.
- ``--goproxy URL``: before the build, a separate *download step* runs ``go list -deps`` (the Go
  tool, never the program) in the request's box with ``GOPROXY=URL`` into a module cache of the
  request's own.  A ``file://`` proxy directory is mounted read-only and needs no network; for an
  ``http(s)://`` proxy only the download step gets the host's network.  The build then reads that
  cache read-only, with ``GOPROXY=off``; the program itself never has network.

Either way the client's ``go.mod`` (and ``go.sum``) is copied to ``/out`` and the go command
uses it with ``-modfile``, so it can add missing requirements and sums while ``/src`` stays
read-only.  Checksums are not checked against a database (``GOSUMDB=off``): the operator's
proxy or cache is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODCACHE_INSIDE = "/gomodcache"
PROXY_INSIDE = "/goproxy"
MODFILE_INSIDE = "/out/go.mod"
# go would index each module it reads into GOCACHE, which is read-only: it then fails ("not in
# std").  The standard library's index is in the warm cache; third-party modules go unindexed.
NO_MODULE_INDEX = "goindex=0"


@dataclass(frozen=True)
class ModuleSource:
    """Where modules come from: a prepared cache or a proxy (exactly one)."""

    cache: Path | None = None
    proxy: str | None = None

    def __post_init__(self) -> None:
        if (self.cache is None) == (self.proxy is None):
            raise ValueError("give either a module cache or a proxy")
        if self.proxy is not None and not self.proxy.startswith(("file://", "http://",
                                                                 "https://")):
            raise ValueError("--goproxy takes a file://, http:// or https:// URL")

    @property
    def downloads(self) -> bool:
        """True: a download step runs before each build."""
        return self.proxy is not None

    @property
    def proxy_dir(self) -> Path | None:
        """The host directory of a ``file://`` proxy (mounted read-only), else None."""
        if self.proxy is not None and self.proxy.startswith("file://"):
            return Path(self.proxy.removeprefix("file://"))
        return None

    @property
    def network(self) -> bool:
        """True when the download step needs the host's network (an http(s) proxy)."""
        return self.proxy is not None and self.proxy_dir is None

    def download_env(self) -> dict[str, str]:
        proxy = f"file://{PROXY_INSIDE}" if self.proxy_dir is not None else str(self.proxy)
        return {"GOPROXY": proxy, "GOMODCACHE": MODCACHE_INSIDE, "GOVCS": "*:off",
                "GONOSUMDB": "", "GOPRIVATE": "", "GOFLAGS": f"-mod=mod -modfile={MODFILE_INSIDE}",
                "GODEBUG": NO_MODULE_INDEX}

    def build_env(self) -> dict[str, str]:
        # A prepared cache answers version queries itself; after a download step all is there.
        proxy = "off" if self.downloads else f"file://{MODCACHE_INSIDE}/cache/download"
        return {"GOPROXY": proxy, "GOMODCACHE": MODCACHE_INSIDE, "GOVCS": "*:off",
                "GOFLAGS": f"-mod=mod -modfile={MODFILE_INSIDE}", "GODEBUG": NO_MODULE_INDEX}

    def describe(self) -> str:
        if self.cache is not None:
            return f"modules: from the read-only module cache {self.cache}"
        how = "no network" if self.network is False else "host network for the download only"
        return f"modules: downloaded through GOPROXY {self.proxy} before each build ({how})"
