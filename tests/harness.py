"""A real daemon on a real socket, for integration tests.

``Daemon`` starts ``twistd -n sandboxd`` from this checkout's virtual environment with its own
state directory and a Unix socket, and talks to it with plain sockets, as ``socat`` would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).parent / "twistd"
HANG = 120  # seconds: only to catch hangs, never a performance bound

# The drivers the suites run with; SANDBOXD_TEST_DRIVERS (a comma list) narrows them (the
# cgroup-v2 guest runs the general suites with bubblewrap only: scripts/cgroup2/run.sh).
DRIVERS = [d for d in ("bubblewrap", "isolate")
           if d in os.environ.get("SANDBOXD_TEST_DRIVERS", "bubblewrap,isolate").split(",")]


def driver_missing(driver: str) -> str | None:
    """Why ``driver`` cannot be tested here, or None."""
    if driver == "isolate" and shutil.which("isolate") is None:
        return "isolate is not installed on this machine: isolate driver not tested"
    if driver == "bubblewrap" and shutil.which("bwrap") is None:
        return "bubblewrap is not installed (make setup installs it)"
    return None


def _claim_box_range() -> tuple[int, int]:
    """A box range no other test daemon on this machine holds (isolate ids are global)."""
    import fcntl
    import random

    locks = Path(tempfile.gettempdir()) / "sandboxd-test-boxes"
    locks.mkdir(exist_ok=True)
    slots = list(range(1, 56))
    random.shuffle(slots)
    for slot in slots:
        fd = os.open(locks / f"{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held.append(fd)  # held until this test process exits
        return fd, slot * 16
    raise RuntimeError("no free box range for a test daemon")


_held: list[int] = []


class Daemon:
    """One ``twistd sandboxd`` process with its own state directory."""

    def __init__(self, driver: str = "bubblewrap", *args: str, boxes: int = 2,
                 listen: Iterable[str] = ()) -> None:
        self.driver = driver
        self.dir = Path(tempfile.mkdtemp(prefix="sandboxd-test-"))
        os.chmod(self.dir, 0o755)
        self.socket_path = str(self.dir / "sock")
        self.state_dir = self.dir / "state"
        self.log_path = self.dir / "twistd.log"
        self.argv = [
            str(TWISTD), "-n", "--pidfile=", f"--logfile={self.log_path}", "sandboxd",
            f"--sandbox={driver}", f"--state-dir={self.state_dir}", f"--boxes={boxes}",
            f"--listen=unix:{self.socket_path}", *[f"--listen={e}" for e in listen], *args,
        ]
        self.proc: subprocess.Popen | None = None
        self._lock_fd, self.first_box = _claim_box_range()
        self.argv.insert(self.argv.index("sandboxd") + 1, f"--first-box={self.first_box}")
        self.argv.insert(self.argv.index("sandboxd") + 1, f"--first-uid={100000 + self.first_box}")
        # Box numbers first-box .. first-box + 3 x boxes + max-sessions + 2 are this daemon's alone
        # (sandboxd refuses overlapping ranges): 3 x boxes + 4 sessions + 3 fit in the 16 claimed.
        self.argv.insert(self.argv.index("sandboxd") + 1, "--max-sessions=4")

    def start(self, wait_for: str | None = None) -> Daemon:
        self.proc = subprocess.Popen(
            self.argv, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + HANG
        target = wait_for or self.socket_path
        # The socket exists from before the daemon starts (it listens, then twistd starts its
        # services): started means it has logged that it listens, where it logs to a file.
        logged = any(a.startswith("--logfile=") and a != "--logfile=-" for a in self.argv)
        listening = self.log().count("] listening on ")
        while not os.path.exists(target) or (
                logged and self.log().count("] listening on ") == listening):
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{out}\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        code = self.proc.returncode
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        return code

    def cleanup(self) -> None:
        self.stop()
        # The state directory's box mounts are the daemon's to remove; leftovers mean a leak.
        subprocess.run(["umount", "-R", "-l", str(self.state_dir)], capture_output=True)
        for mount in Path("/proc/mounts").read_text().splitlines():
            point = mount.split()[1]
            if point.startswith(str(self.state_dir)):
                subprocess.run(["umount", "-l", point], capture_output=True)
        _remove_cgroups(self.state_dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock_fd in _held:
            _held.remove(self._lock_fd)
            os.close(self._lock_fd)

    def connect(self) -> Client:
        return Client(self.socket_path)

    def run(self, *requests: dict[str, Any] | bytes | str, timeout: float = HANG) -> list[dict]:
        """Send requests on one connection, half-close, and read every event until EOF."""
        with self.connect() as client:
            for r in requests:
                client.send(r)
            client.shutdown_write()
            return client.read_all(timeout)


def _remove_cgroups(state_dir: Path) -> None:
    """What a daemon that was killed (SIGKILL, never restarted) left in the cgroup trees: its
    ``sandboxd-<hash>`` base cgroups and any run cgroups in them. A daemon stopped cleanly
    leaves none (tests/system/test_failures.py checks that); this only keeps a test run from leaving
    killed daemons' behind."""
    from sandboxd.service.assemble import instance_name

    name = f"sandboxd-{instance_name(state_dir)}"
    for base in _cgroups_named(name):
        try:
            children = [c for c in base.iterdir() if c.is_dir()]
        except FileNotFoundError:
            continue  # gone meanwhile
        for child in children:
            try:
                pids = (child / "cgroup.procs").read_text().split()
            except FileNotFoundError:
                continue
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
            for _ in range(100):
                try:
                    child.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)
        try:
            base.rmdir()
        except OSError:
            pass


def _cgroups_named(name: str) -> list[Path]:
    """The cgroups called ``name`` in the cgroup trees.  Other daemons' cgroups come and go
    while the trees are walked (a directory that vanished makes the walk fail): walk again."""
    for _ in range(20):
        try:
            return [p for pattern in (name, f"*/{name}", f"*/*/*/{name}")
                    for p in Path("/sys/fs/cgroup").glob(pattern) if p.is_dir()]
        except FileNotFoundError:
            time.sleep(0.01)
    return []


class Client:
    """A line-oriented client over a Unix (or TCP) socket."""

    def __init__(self, path: str | None = None, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(HANG)
            sock.connect(path)
        self.sock = sock
        self.buffer = b""
        self.events: list[dict] = []

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, request: dict[str, Any] | bytes | str) -> None:
        if isinstance(request, dict):
            data = json.dumps(request).encode() + b"\n"
        elif isinstance(request, str):
            data = request.encode() + b"\n"
        else:
            data = request
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def read_event(self, timeout: float = HANG) -> dict | None:
        """The next event, or None at EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no event within {timeout}s; got {self.events[-3:]}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                if self.buffer.strip():
                    raise AssertionError(f"partial line at EOF: {self.buffer[:200]!r}")
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        event = json.loads(line)
        event["_received"] = time.monotonic()
        self.events.append(event)
        return event

    def read_all(self, timeout: float = HANG) -> list[dict]:
        while self.read_event(timeout) is not None:
            pass
        return self.events

    def read_until_done(self, request_id: str | None, timeout: float = HANG) -> list[dict]:
        """Events up to and including the final event of ``request_id``."""
        out = []
        while True:
            event = self.read_event(timeout)
            if event is None:
                raise AssertionError(f"connection closed before {request_id} finished: {out}")
            out.append(event)
            if event.get("done") and event.get("id") == request_id:
                return [e for e in out if e.get("id") == request_id]


def finals(events: list[dict]) -> dict[str | None, dict]:
    """The final event of each request id; fails if any id has more than one."""
    out: dict[str | None, dict] = {}
    for e in events:
        if e.get("done"):
            assert e["id"] not in out or e["id"] is None, f"two final events for {e['id']}"
            out[e["id"]] = e
    return out


def output(events: list[dict], request_id: str | None = None, stream: str | None = None) -> str:
    return "".join(
        e["output"] for e in events
        if not e.get("done") and (request_id is None or e["id"] == request_id)
        and (stream is None or e["stream"] == stream)
    )


def go_main(body: str, imports: Iterable[str] = ("fmt",)) -> str:
    """A Go program: ``body`` is the inside of ``main``."""
    lines = "\n".join(f'\t"{i}"' for i in imports)
    return f"package main\n\nimport (\n{lines}\n)\n\nfunc main() {{\n{body}\n}}\n"
