#!/usr/bin/env python3
"""The HAProxy hop and capacity on paper: ``.venv/bin/python bench/cluster.py``.

One daemon (bubblewrap) on loopback TCP, and HAProxy running deploy/haproxy/haproxy.cfg as it
is, its three server lines all pointing at that daemon (the hop is what is measured, not the
spread).  A cached program (built once, then a binary-cache hit) is requested on a new
connection each time, anonymous and in a session, directly and through HAProxy, round by round
interleaved so that drift on a shared machine hits every side alike: p50 and p99 of the wall
time from connect to the final event.

Then CPU per request, measured, not guessed: the daemon's own CPU (its /proc stat) plus
everything its boxes ran (its cgroup v1 cpuacct; where that is missing the figure says so) plus
HAProxy's, over a block of sequential requests, less the idle background (health checks and
the /healthz probe) measured before.  From it: requests per second per core, and how many
daemons a target load needs.  See docs/performance.md ("Several daemons").
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench import (  # noqa: E402
    box_cpu_reader,
    daemon_own_cpu_ms,
    fresh_program,
    hello,
    median,
    ms_since,
    percentile,
)
from tests.harness import Daemon, driver_missing  # noqa: E402

CACHED = hello(424242)
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(port: int, request: dict) -> float:
    """One request on a new TCP connection: ms from connect to its final event (``ok``)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed before the final event")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                event = json.loads(line)
                if event.get("done"):
                    if event["status"] != "ok":
                        raise RuntimeError(f"request failed: {event}")
                    return ms_since(start)


def one_http(port: int, request: dict, headers: dict[str, str]) -> float:
    """One POST /v1/run on a new HTTP connection: ms until its NDJSON answer ended ``ok``."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/run", json.dumps(request), headers)
        final = json.loads(conn.getresponse().read().splitlines()[-1])
    finally:
        conn.close()
    if final.get("status") != "ok":
        raise RuntimeError(f"request failed: {final}")
    return ms_since(start)


def haproxy_cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:13]) * 1000 / os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU ms of the daemon, its boxes and HAProxy, read together."""

    def __init__(self, d: Daemon, haproxy_pid: int) -> None:
        assert d.proc is not None
        self.pid = d.proc.pid
        self.boxes: Callable[[], float] | None = box_cpu_reader(d)
        self.haproxy_pid = haproxy_pid

    def read(self) -> dict[str, float]:
        return {"daemon": daemon_own_cpu_ms(self.pid),
                "boxes": self.boxes() if self.boxes else float("nan"),
                "haproxy": haproxy_cpu_ms(self.haproxy_pid)}


def cpu_block(meter: Meter, idle_per_s: dict[str, float], run: Callable[[], None],
              count: int) -> dict[str, float]:
    """CPU ms per request over ``count`` sequential requests, idle background taken off."""
    before, start = meter.read(), time.monotonic()
    for _ in range(count):
        run()
    after, took = meter.read(), time.monotonic() - start
    return {k: max(0.0, (after[k] - before[k] - idle_per_s[k] * took) / count) for k in after}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=150, help="latency rounds (8 requests each)")
    p.add_argument("--cpu-requests", type=int, default=200, help="cached requests per CPU block")
    p.add_argument("--fresh", type=int, default=15, help="new programs for the fresh CPU block")
    p.add_argument("--target", type=float, default=500.0, help="requests/s to plan for")
    p.add_argument("--fresh-share", type=float, default=0.2,
                   help="share of the target that are new programs (a build each)")
    p.add_argument("--cores", type=int, default=8, help="cores of one daemon's machine")
    p.add_argument("--utilisation", type=float, default=0.7, help="CPU share to plan up to")
    args = p.parse_args()
    haproxy = shutil.which("haproxy")
    if haproxy is None or driver_missing("bubblewrap"):
        print("bench/cluster.py needs haproxy and bubblewrap (scripts/sandbox-tools.sh --test)")
        return 1

    port, health, front = free_port(), free_port(), free_port()
    web, web_front = free_port(), free_port()
    d = Daemon("bubblewrap", "--node-name=bench", f"--metrics=tcp:{health}:interface=127.0.0.1",
               f"--http=tcp:{web}:interface=127.0.0.1",
               boxes=os.cpu_count() or 2, listen=[f"tcp:{port}:interface=127.0.0.1"])
    work = Path(tempfile.mkdtemp(prefix="sandboxd-bench-cluster-"))
    env = {**os.environ, "SANDBOXD_BIND": f"127.0.0.1:{front}",
           "SANDBOXD_HTTP_BIND": f"127.0.0.1:{web_front}",
           "HAPROXY_ADMIN_SOCKET": str(work / "admin.sock"), "HAPROXY_LOG": "stdout"}
    for node in ("NODE_A", "NODE_B", "NODE_C"):
        env[node], env[f"{node}_HEALTH"] = f"127.0.0.1:{port}", str(health)
        env[f"{node}_HTTP"] = f"127.0.0.1:{web}"
    proxy = None
    try:
        d.start()
        log = open(work / "haproxy.log", "wb")
        proxy = subprocess.Popen([haproxy, "-db", "-f", str(CONFIG)], env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:  # the first build, and HAProxy's checks passing
            try:
                one(front, {"code": CACHED})
                one(port, {"code": CACHED})
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        time.sleep(3)  # let every server line pass its checks (rise 2, inter 1 s)

        anon = {"code": CACHED}
        session = {"session_id": "bench_s", "code": CACHED}
        by_header = {"Sandboxd-Session": "bench_h"}
        sides: dict[str, Callable[[], float]] = {
            "direct, anonymous": lambda: one(port, anon),
            "HAProxy, anonymous": lambda: one(front, anon),
            "direct, session": lambda: one(port, session),
            "HAProxy, session": lambda: one(front, session),
            "HTTP direct, anonymous": lambda: one_http(web, anon, {}),
            "HTTP HAProxy, anonymous": lambda: one_http(web_front, anon, {}),
            "HTTP direct, session": lambda: one_http(web, anon, by_header),
            "HTTP HAProxy, session": lambda: one_http(web_front, anon, by_header),
        }
        for side in sides.values():  # the HTTP servers' checks are the line servers'
            side()
        walls: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, side in sides.items():
                walls[name].append(side())

        meter = Meter(d, proxy.pid)
        idle0, t0 = meter.read(), time.monotonic()
        time.sleep(5)
        idle1, quiet = meter.read(), time.monotonic() - t0
        idle = {k: (idle1[k] - idle0[k]) / quiet for k in idle0}
        cached_direct = cpu_block(meter, idle, lambda: one(port, anon), args.cpu_requests)
        cached_proxy = cpu_block(meter, idle, lambda: one(front, anon), args.cpu_requests)
        fresh = cpu_block(meter, idle, lambda: one(front, {"code": fresh_program()}),
                          args.fresh)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(30)
        d.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    print(f"# bench/cluster.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} cores, bubblewrap, {args.rounds} rounds")
    print("\n| path (cached program, new connection each) | p50 ms | p99 ms |")
    print("|---|---|---|")
    for name, values in walls.items():
        print(f"| {name} | {median(values):.1f} | {percentile(values, 99):.1f} |")
    for face in ("", "HTTP "):
        for kind in ("anonymous", "session"):
            hop = [b - a for a, b in zip(walls[f"{face}direct, {kind}"],
                                         walls[f"{face}HAProxy, {kind}"], strict=True)]
            print(f"| {face}hop ({kind}: HAProxy - direct, same round) | {median(hop):+.1f} | "
                  f"{percentile(hop, 99):+.1f} |")

    print("\nidle background, CPU ms per second: " +
          ", ".join(f"{k} {v:.1f}" for k, v in idle.items()))
    print("\n| CPU ms per request | daemon | boxes | HAProxy | total |")
    print("|---|---|---|---|---|")
    rows = {"cached, direct": cached_direct, "cached, through HAProxy": cached_proxy,
            "new program (build + run), through HAProxy": fresh}
    totals = {}
    for name, cpu in rows.items():
        totals[name] = sum(cpu.values())
        print(f"| {name} | {cpu['daemon']:.2f} | {cpu['boxes']:.2f} | {cpu['haproxy']:.2f} | "
              f"{totals[name]:.2f} |")

    cached_ms = totals["cached, through HAProxy"]
    fresh_ms = totals["new program (build + run), through HAProxy"]
    mix_ms = (1 - args.fresh_share) * cached_ms + args.fresh_share * fresh_ms
    print("\n| on paper | cached | new program | mix |")
    print("|---|---|---|---|")
    print(f"| requests/s per core (CPU bound) | {1000 / cached_ms:.0f} | {1000 / fresh_ms:.1f} | "
          f"{1000 / mix_ms:.1f} |")
    usable = args.cores * args.utilisation
    need = args.target * mix_ms / 1000
    daemons = max(1, -(-need // usable))
    print(f"\nA target of {args.target:g} requests/s, {args.fresh_share:.0%} of them new "
          f"programs: {need:.1f} cores of CPU; with {args.cores}-core daemons planned up to "
          f"{args.utilisation:.0%} ({usable:.1f} cores each): {int(daemons)} daemons, "
          f"{int(daemons) + 1} to lose one and keep up.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
