#!/usr/bin/env python3
"""``make bench``: how close sandboxd is to the floor, measured in one run on this machine.

The floor is a bare ``go build -trimpath -o x main.go && ./x`` with the same toolchain, the same
build environment and a warm, writable cache (a private copy of the daemon's standard-library
cache), no sandbox.  Its program changes a constant each time, exactly like the daemon's "fresh"
case: a floor that rebuilt the same program would compare a cached main package against a fresh
compile.  The unchanged-program floor is printed too, for reference.

Everything is interleaved round by round (floor, daemon per driver, baseline), so drift on a
shared machine hits every side alike; figures are medians.  See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandboxd.golang import toolchain as tc  # noqa: E402
from tests.harness import Daemon, _claim_box_range, driver_missing  # noqa: E402

GOALS = {"fresh": 1.25, "repeat": 0.15, "burst": 1.25, "stream_p99_ms": 5.0}
SEED = random.randrange(1 << 30)  # every run's programs are new to every cache
_serial = iter(range(1 << 40))

STREAM_LINES = 200
STREAM_SOURCE = (
    'package main\n\nimport (\n\t"fmt"\n\t"time"\n)\n\nfunc main() {\n'
    f"\tfor i := 0; i < {STREAM_LINES}; i++ {{\n"
    '\t\tfmt.Printf("%d\\n", time.Now().UnixNano())\n'
    "\t\ttime.Sleep(2 * time.Millisecond)\n\t}\n}\n"
)


def hello(n: int) -> str:
    return f'package main\n\nimport "fmt"\n\nfunc main() {{\n\tfmt.Println("hello", {n})\n}}\n'


def fresh_program() -> str:
    return hello(SEED * 1000 + next(_serial))


REPEATED = hello(-1)


TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def process_cpu_ms(pid: int) -> float:
    """CPU time of a process and of every child it has reaped (and theirs), in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) * TICK_MS


def box_cpu_reader(daemon: Daemon) -> Callable[[], float] | None:
    """CPU ms of everything the daemon ran in its boxes: its v1 cpuacct base cgroup keeps the
    usage of removed child cgroups.  None where that is not available (v2, no cgroups)."""
    from sandboxd.service.assemble import instance_name

    own = {}
    for line in Path(f"/proc/{daemon.proc.pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(","):
            own[c] = path
    for line in Path("/proc/mounts").read_text().splitlines():
        _, point, fstype, opts, *_ = line.split()
        if fstype == "cgroup" and "cpuacct" in opts.split(","):
            usage = (Path(point) / own.get("cpuacct", "/").lstrip("/")
                     / f"sandboxd-{instance_name(daemon.state_dir)}" / "cpuacct.usage")
            if usage.exists():
                return lambda: int(usage.read_text()) / 1e6
    return None


def daemon_own_cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:13]) * TICK_MS


def own_children_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def ms_since(start: float) -> float:
    return (time.monotonic() - start) * 1000


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# -- the floor -------------------------------------------------------------------------------


class Floor:
    """Bare ``go build && ./x``: no daemon, no sandbox, a warm writable cache of its own."""

    def __init__(self, work: Path, toolchain: tc.Toolchain) -> None:
        self.work = work
        self.go = str(toolchain.goroot / "bin" / "go")
        cache = work / "floor-gocache"
        # A real copy: go touches the entries it uses, and the shared cache must not change.
        shutil.copytree(toolchain.std_cache, cache, symlinks=True)
        env = toolchain.build_env(layer=False)  # its cache is writable
        env.update(GOROOT=str(toolchain.goroot), GOCACHE=str(cache), HOME=str(work),
                   GOPATH=str(work / "gopath"), GOMODCACHE=str(work / "gopath" / "mod"),
                   GOTMPDIR="", GODEBUG="", PATH=f"{toolchain.goroot}/bin:/usr/bin:/bin")
        self.env = env
        self.flags = " ".join(tc.BUILD_FLAGS)

    def run(self, source: str, slot: str = "0") -> float:
        d = self.work / f"floor-{slot}"
        d.mkdir(exist_ok=True)
        (d / "main.go").write_text(source)
        start = time.monotonic()
        proc = subprocess.run(
            ["/bin/sh", "-c", f"{self.go} build {self.flags} -o x main.go && ./x"],
            cwd=d, env=self.env, capture_output=True,
        )
        took = ms_since(start)
        if proc.returncode != 0 or not proc.stdout.startswith(b"hello"):
            raise RuntimeError(f"floor build failed: {proc.stderr.decode(errors='replace')}")
        return took


# -- the daemon ------------------------------------------------------------------------------


def request(path: str, code: str) -> tuple[float, dict]:
    """One request on a new connection: connect, send, read to the final event."""
    start = time.monotonic()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(120)
    sock.connect(path)
    try:
        sock.sendall(json.dumps({"id": "b", "code": code}).encode() + b"\n")
        (event,) = read_finals(sock, 1)
        return ms_since(start), event
    finally:
        sock.close()


def read_events(sock: socket.socket) -> Iterator[tuple[dict, int]]:
    """Each event the daemon sends, with ``time.time_ns()`` when its bytes arrived."""
    buf = b""
    while True:
        chunk = sock.recv(65536)
        now = time.time_ns()
        if not chunk:
            raise RuntimeError("the daemon closed the connection early")
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield json.loads(line), now


def read_finals(sock: socket.socket, count: int) -> list[dict]:
    """Read events until ``count`` final events came; each must say ``ok``."""
    finals: list[dict] = []
    for event, _ in read_events(sock):
        if event.get("done"):
            if event["status"] != "ok":
                raise RuntimeError(f"request failed: {event}")
            finals.append(event)
            if len(finals) == count:
                break
    return finals


def burst_client(path: str, codes: list[str]) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(300)
    sock.connect(path)
    try:
        sock.sendall(b"".join(json.dumps({"id": f"q{i}", "code": c}).encode() + b"\n"
                              for i, c in enumerate(codes)))
        read_finals(sock, len(codes))
    finally:
        sock.close()


def daemon_burst(path: str, clients: int = 4, each: int = 4) -> float:
    programs = [[fresh_program() for _ in range(each)] for _ in range(clients)]
    errors: list[BaseException] = []

    def guarded(codes: list[str]) -> None:
        try:
            burst_client(path, codes)
        except BaseException as e:
            errors.append(e)

    start = time.monotonic()
    runners = [threading.Thread(target=guarded, args=(p,)) for p in programs]
    for t in runners:
        t.start()
    for t in runners:
        t.join()
    took = ms_since(start)
    if errors:
        raise errors[0]
    return took


def bare_burst(floor: Floor, count: int = 16, parallel: int = 2) -> float:
    programs = [fresh_program() for _ in range(count)]
    start = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda ip: floor.run(ip[1], f"burst{ip[0] % parallel}-{ip[0]}"),
                      enumerate(programs)))
    return ms_since(start)


def stream_latency(path: str) -> list[float]:
    """Milliseconds from the child's write (its own clock) to our receive, per line."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(120)
    sock.connect(path)
    out: list[float] = []
    try:
        sock.sendall(json.dumps({"id": "s", "code": STREAM_SOURCE}).encode() + b"\n")
        for event, now in read_events(sock):
            if event.get("done"):
                return out
            for stamp in event["output"].split():
                out.append((now - int(stamp)) / 1e6)
        return out
    finally:
        sock.close()


class RssSampler:
    """The daemon's resident memory, sampled while something runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def now_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_kb = max(self.peak_kb, self.now_kb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the original service's way --------------------------------------------------------------


class IsolateGoRun:
    """``isolate --init`` then ``isolate --run -- go run main.go`` per request, one shared
    writable build cache (warm: a copy of the standard-library cache, owned by the box)."""

    def __init__(self, work: Path, toolchain: tc.Toolchain) -> None:
        _, first = _claim_box_range()
        self.box = first + 15
        self.uid = 60000 + self.box  # isolate's first_uid (see /usr/local/etc/isolate)
        self.goroot = toolchain.goroot
        self.cache = work / "isolate-gocache"
        shutil.copytree(toolchain.std_cache, self.cache, symlinks=True)
        subprocess.run(["chown", "-R", f"{self.uid}:{self.uid}", str(self.cache)], check=True)
        os.chmod(work, 0o755)

    def run(self, source: str) -> float:
        start = time.monotonic()
        box = subprocess.run(["isolate", "-b", str(self.box), "--init"], capture_output=True,
                             text=True, check=True).stdout.strip()
        (Path(box) / "box" / "main.go").write_text(source)
        proc = subprocess.run([
            "isolate", "-b", str(self.box), "-s", "--syscalls=65531", "-p64", "-t", "60",
            "-w", "120", "--open-files=256", f"--dir=/go={self.goroot}",
            f"--dir=/gocache={self.cache}:rw", "-E", "GOCACHE=/gocache", "-E", "HOME=/tmp",
            "-E", "CGO_ENABLED=0", "-E", "GOTOOLCHAIN=local", "-E", "GOPROXY=off",
            "-E", "GOROOT=/go", "-E", "PATH=/go/bin:/usr/bin:/bin", "--run", "--",
            "/go/bin/go", "run", "-trimpath", "main.go",
        ], capture_output=True)
        took = ms_since(start)
        if proc.returncode != 0 or not proc.stdout.startswith(b"hello"):
            raise RuntimeError(f"isolate go run failed: {proc.stderr.decode(errors='replace')}")
        return took

    def close(self) -> None:
        subprocess.run(["isolate", "-b", str(self.box), "--cleanup"], capture_output=True)


# -- the run ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (medians)")
    parser.add_argument("--bursts", type=int, default=5,
                        help="bursts per side (one burst varies by ±10 %% from the next)")
    parser.add_argument("--streams", type=int, default=3, help="stream runs per driver")
    parser.add_argument("--daemon-arg", action="append", default=[], metavar="ARG",
                        help="one more twistd sandboxd option for every daemon (repeatable), "
                        "e.g. --daemon-arg=--held-builds=off for an A/B run")
    parser.add_argument("--drivers", default="bubblewrap,isolate")
    parser.add_argument("--json", help="also write every sample here")
    args = parser.parse_args()

    toolchain = tc.load(tc.find_goroot(None), tc.DEFAULT_CACHE_DIR)
    if not (toolchain.std_cache / "README").is_file():
        print("no standard-library cache: run make setup first", file=sys.stderr)
        return 1
    drivers = []
    for name in args.drivers.split(","):
        why = driver_missing(name)
        if why:
            print(f"skipping {name}: {why}")
        else:
            drivers.append(name)
    work = Path(tempfile.mkdtemp(prefix="sandboxd-bench-"))
    os.chmod(work, 0o755)
    daemons: dict[str, Daemon] = {}
    baseline: IsolateGoRun | None = None
    pids: dict[str, int] = {}
    began = time.monotonic()
    samples: dict[str, list[float]] = {}

    def take(name: str, fn: Callable[[], float]) -> None:
        samples.setdefault(name, []).append(fn())

    try:
        floor = Floor(work, toolchain)
        for name in drivers:
            daemons[name] = Daemon(name, *args.daemon_arg, boxes=2).start()
        if "isolate" in drivers:
            baseline = IsolateGoRun(work, toolchain)
        rss = {name: RssSampler(d.proc.pid) for name, d in daemons.items()}
        pids = {name: d.proc.pid for name, d in daemons.items()}

        print(f"warming up ({', '.join(drivers)}; seed {SEED}) ...", flush=True)
        for _ in range(2):
            floor.run(fresh_program())
            floor.run(REPEATED, "repeat")
            for d in daemons.values():
                request(d.socket_path, fresh_program())
                request(d.socket_path, REPEATED)
            if baseline:
                baseline.run(fresh_program())
        idle_kb = {name: r.now_kb() for name, r in rss.items()}

        print(f"{args.rounds} interleaved rounds ...", flush=True)
        build_ms: dict[str, list[float]] = {}
        cpu: dict[str, float] = {}
        cpu_of: dict[str, Callable[[], float]] = {}
        for name, d in daemons.items():
            boxes = box_cpu_reader(d)
            if boxes is None:  # the sandbox's processes are reaped by the daemon's children
                cpu_of[name] = lambda pid=d.proc.pid: process_cpu_ms(pid)
            else:
                cpu_of[name] = lambda pid=d.proc.pid, boxes=boxes: (daemon_own_cpu_ms(pid)
                                                                    + boxes())

        def charge(name: str, before: float, after: float) -> None:
            cpu[name] = cpu.get(name, 0.0) + after - before

        for _ in range(args.rounds):
            before = own_children_cpu_ms()
            take("floor fresh", lambda: floor.run(fresh_program()))
            charge("floor fresh", before, own_children_cpu_ms())
            take("floor repeat", lambda: floor.run(REPEATED, "repeat"))
            for name, d in daemons.items():
                usage = cpu_of[name]
                before = usage()
                ms, final = request(d.socket_path, fresh_program())
                charge(f"{name} fresh", before, usage())
                samples.setdefault(f"{name} fresh", []).append(ms)
                build_ms.setdefault(name, []).append(final["build_ms"])
                samples.setdefault(f"{name} fresh run wall", []).append(final["wall_ms"])
                before = usage()
                take(f"{name} repeat", lambda d=d: request(d.socket_path, REPEATED)[0])
                charge(f"{name} repeat", before, usage())
            if baseline:
                take("isolate go run", lambda: baseline.run(fresh_program()))

        print(f"{args.bursts} bursts per side (16 programs, 4 clients, 2 boxes) ...", flush=True)
        for _ in range(args.bursts):
            take("bare burst", lambda: bare_burst(floor))
            for name, d in daemons.items():
                with rss[name] as sampler:
                    take(f"{name} burst", lambda d=d: daemon_burst(d.socket_path))
                samples.setdefault(f"{name} rss load", []).append(sampler.peak_kb)
                rss[name] = RssSampler(d.proc.pid)

        print("stream latency ...", flush=True)
        stream: dict[str, list[float]] = {}
        for _ in range(args.streams):
            for name, d in daemons.items():
                stream.setdefault(name, []).extend(stream_latency(d.socket_path))
    finally:
        for d in daemons.values():
            d.cleanup()
        if baseline:
            baseline.close()
        shutil.rmtree(work, ignore_errors=True)

    cpu_per = {name: total / max(1, args.rounds) for name, total in cpu.items()}
    if args.daemon_arg:
        print(f"\ndaemon options: {' '.join(args.daemon_arg)}")
    report(samples, build_ms, stream, idle_kb, drivers, time.monotonic() - began, cpu_per, pids)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"samples": samples, "build_ms": build_ms, "stream": stream, "idle_kb": idle_kb,
             "cpu_ms_per_request": cpu_per},
            indent=1))
    return 0


def report(samples: dict[str, list[float]], build_ms: dict[str, list[float]],
           stream: dict[str, list[float]], idle_kb: dict[str, int], drivers: list[str],
           took_s: float, cpu: dict[str, float], pids: dict[str, int]) -> None:
    def med(name: str) -> float:
        return median(samples.get(name, []))

    floor, floor_rep, bare = med("floor fresh"), med("floor repeat"), med("bare burst")
    load = os.getloadavg()
    print()
    print(f"sandboxd bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{platform.node()}, {os.cpu_count()} cores, {platform.release()}, "
          f"load {load[0]:.1f}/{load[1]:.1f}; took {took_s:.0f} s")
    print()
    print("| measure | median ms | ratio | goal | |")
    print("|---|---:|---:|---:|---|")

    def row(label: str, value: float, ratio: float | None = None, goal: float | None = None,
            unit: str = "") -> None:
        r = "" if ratio is None else f"{ratio:.2f}x"
        g = "" if goal is None else (f"≤ {goal:g}x" if not unit else f"≤ {goal:g} {unit}")
        check = value if unit else ratio
        ok = "" if goal is None or check is None else ("ok" if check <= goal else "MISSED")
        print(f"| {label} | {value:.1f} | {r} | {g} | {ok} |")

    n = len(samples.get("floor fresh", []))
    row(f"floor: bare go build + run, new program (n={n})", floor)
    row("floor: bare go build + run, same program", floor_rep, floor_rep / floor)
    for name in drivers:
        fresh, rep = med(f"{name} fresh"), med(f"{name} repeat")
        row(f"{name}: new program, end to end", fresh, fresh / floor, GOALS["fresh"])
        row(f"{name}:   of which build_ms (daemon-measured)", median(build_ms.get(name, [])))
        row(f"{name}:   of which run wall_ms", med(f"{name} fresh run wall"))
        row(f"{name}: same program (binary cache), end to end", rep, rep / floor,
            GOALS["repeat"])
    if "isolate go run" in samples:
        v = med("isolate go run")
        row("original way: isolate --init + --run go run, shared writable cache", v, v / floor)
    nb = len(samples.get("bare burst", []))
    row(f"bare burst: 16 builds + runs, 2 at a time (n={nb})", bare)
    for name in drivers:
        v = med(f"{name} burst")
        row(f"{name}: burst of 16 new programs, 4 clients, 2 boxes", v, v / bare, GOALS["burst"])
    for name in drivers:
        lat = stream.get(name, [])
        row(f"{name}: stream latency p50 (n={len(lat)})", percentile(lat, 50))
        row(f"{name}: stream latency p99", percentile(lat, 99), None, GOALS["stream_p99_ms"],
            "ms")
    print()
    for name in drivers:
        peak = max(samples.get(f"{name} rss load", [0]))
        idle = idle_kb.get(name, 0) / 1024
        print(f"{name} (pid {pids.get(name)}): daemon RSS idle {idle:.1f} MiB, "
              f"under burst load (peak) {peak / 1024:.1f} MiB")
    print()
    print("CPU time per request (mean; all processes, the daemon's own included; less "
          "sensitive to other load than wall time):")
    base = cpu.get("floor fresh", 0.0)
    for name, value in cpu.items():
        ratio = f" ({value / base:.2f}x the floor)" if base and name != "floor fresh" else ""
        print(f"  {name}: {value:.0f} ms{ratio}")
    print()
    print("raw samples (ms):")
    for name, values in samples.items():
        if "rss" not in name:
            print(f"  {name}: {' '.join(f'{v:.0f}' for v in values)}")


if __name__ == "__main__":
    sys.exit(main())
