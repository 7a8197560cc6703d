#!/usr/bin/env python3
"""Fairness and held memory, measured on a real daemon (docs/performance.md, docs/security.md).

``flood``: one Unix-socket connection pipelines 10 000 requests (a cached hello world) at an
even pace over ``--flood-seconds`` while a benign client on another connection sends its
requests one after another; the benign client's statuses and latency (p50/p99), next to the
same benign client on an idle daemon.

``memory``: sessions, each filling its box to the brim (data to ``disk_mb``, then empty files
with 255-byte names until the inodes run out), until the daemon refuses one; how many it
allowed, and what the daemon's base cgroup and the host hold afterwards, against
``--max-box-memory-mb``.

Everything runs on loopback (a Unix socket), bounded in count and time.  Pass
``PYTHONPATH=<another checkout>`` to measure other code with the same script.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import Daemon  # noqa: E402

HELLO = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hello")\n}\n'
FILL = """package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	f, err := os.Create("/box/data")
	if err != nil {
		panic(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	data := 0
	for {
		n, err := f.Write(buf)
		data += n
		if err != nil {
			break
		}
	}
	f.Close()
	pad := strings.Repeat("n", 240)
	files := 0
	for ; ; files++ {
		g, err := os.Create(fmt.Sprintf("/box/%s%08d", pad, files))
		if err != nil {
			break
		}
		g.Close()
	}
	fmt.Println(data>>20, files)
}
"""


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(300)
    sock.connect(path)
    return sock


def finals(sock: socket.socket, count: int | None = None) -> list[dict]:
    """Final events until ``count`` came, or until the daemon closes the connection."""
    out: list[dict] = []
    buf = b""
    while count is None or len(out) < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            event = json.loads(line)
            if event.get("done"):
                out.append(event)
    return out


def one(sock: socket.socket, request: dict) -> tuple[float, dict]:
    start = time.monotonic()
    sock.sendall(json.dumps(request).encode() + b"\n")
    (final,) = finals(sock, 1)
    return (time.monotonic() - start) * 1000, final


def benign(path: str, count: int, prefix: str,
           until: threading.Event | None = None) -> list[tuple[float, str]]:
    """Up to ``count`` requests one after another (and only while ``until`` is not set)."""
    sock = connect(path)
    try:
        out = []
        for i in range(count):
            if until is not None and until.is_set():
                break
            ms, final = one(sock, {"id": f"{prefix}{i}", "code": HELLO})
            out.append((ms, final["status"]))
        return out
    finally:
        sock.close()


def flood(path: str, total: int, seconds: float, result: dict,
          all_sent: threading.Event) -> None:
    sock = connect(path)
    got: list[dict] = []
    reader = threading.Thread(target=lambda: got.extend(finals(sock)))
    reader.start()
    start = time.monotonic()
    batch = 50
    for sent in range(0, total, batch):
        lines = b"".join(json.dumps({"id": f"f{i}", "code": HELLO}).encode() + b"\n"
                         for i in range(sent, min(total, sent + batch)))
        sock.sendall(lines)
        pause = start + seconds * (sent + batch) / total - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    result["sent_s"] = time.monotonic() - start
    all_sent.set()
    sock.shutdown(socket.SHUT_WR)
    reader.join(600)
    sock.close()
    result["statuses"] = {}
    for e in got:
        result["statuses"][e["status"]] = result["statuses"].get(e["status"], 0) + 1
    result["finals"] = len(got)


def queue_ms(log: str, prefix: str) -> str:
    """p50/p99/max of the queue_ms the daemon logged for requests whose id has ``prefix``
    and that ran (status ok)."""
    found = re.findall(rf"request {prefix}\d+ [^\n]*?status=ok [^\n]*?queue_ms=(\d+)", log)
    ms = [float(v) for v in found]
    return (f"p50 {percentile(ms, 50):.0f} ms, p99 {percentile(ms, 99):.0f} ms, "
            f"max {max(ms, default=float('nan')):.0f} ms ({len(ms)} requests)")


def summary(samples: list[tuple[float, str]]) -> str:
    ms = [m for m, s in samples if s == "ok"]
    statuses: dict[str, int] = {}
    for _, s in samples:
        statuses[s] = statuses.get(s, 0) + 1
    return (f"{len(samples)} requests {statuses}; ok latency p50 {percentile(ms, 50):.0f} ms, "
            f"p99 {percentile(ms, 99):.0f} ms, max {max(ms, default=float('nan')):.0f} ms")


def run_flood(args: argparse.Namespace) -> None:
    d = Daemon(args.driver, *args.daemon_arg, boxes=args.boxes).start()
    try:
        with connect(d.socket_path) as sock:
            warm = one(sock, {"id": "warm", "code": HELLO})[1]
        assert warm["status"] == "ok", warm
        idle = benign(d.socket_path, args.benign, "i")
        print(f"benign alone:        {summary(idle)}")
        result: dict = {}
        sent = threading.Event()
        flooder = threading.Thread(target=flood, args=(d.socket_path, args.flood,
                                                       args.flood_seconds, result, sent))
        flooder.start()
        time.sleep(1.0)
        beside = benign(d.socket_path, args.benign, "b", until=sent)  # only during the flood
        flooder.join(900)
        print(f"benign beside flood: {summary(beside)}")
        log = "".join(f.read_text() for f in d.log_path.parent.glob("twistd.log*"))  # rotated
        print(f"  waiting for a box (daemon log, queue_ms): {queue_ms(log, 'b')}")
        print(f"  the flood's requests that ran waited: {queue_ms(log, 'f')}")
        print(f"flood: {args.flood} requests sent over {result.get('sent_s', 0):.1f} s on one "
              f"connection; {result.get('finals')} final events: {result.get('statuses')}")
    finally:
        d.cleanup()


def base_cgroup_usage(d: Daemon) -> int | None:
    from tests.system.test_fairness_daemon import base_memory_dir, usage

    base = base_memory_dir(d)
    return usage(base) if base is not None and base.is_dir() else None


def available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def run_memory(args: argparse.Namespace) -> None:
    bound = [f"--max-box-memory-mb={args.bound}"] if args.bound else []
    d = Daemon(args.driver, *bound, *args.daemon_arg,
               f"--max-sessions-per-client={args.sessions}", f"--max-sessions={args.sessions}",
               boxes=args.boxes).start()
    limits = {"disk_mb": args.disk_mb, "file_size_mb": args.disk_mb, "wall_ms": 60000,
              "cpu_ms": 60000, "memory_mb": max(256, 2 * args.disk_mb)}
    try:
        sock = connect(d.socket_path)
        one(sock, {"id": "warm", "code": FILL, "limits": limits})
        before, avail0 = base_cgroup_usage(d), available_kb()
        allowed = 0
        refusal = ""
        for i in range(args.sessions):
            _, final = one(sock, {"id": f"s{i}", "code": FILL, "session_id": f"s{i}",
                                   "limits": limits})
            if final["status"] != "ok":
                refusal = f"{final['status']}: {final['message']}"
                break
            allowed += 1
        sock.close()
        time.sleep(1)
        after, avail1 = base_cgroup_usage(d), available_kb()
        said = re.search(r"session boxes' files: at most (\d+) MiB", d.log())
        args.bound = int(said.group(1)) if said else args.bound
        print(f"--max-box-memory-mb {args.bound}, sessions of run.disk_mb {args.disk_mb} "
              f"(each filled: data, then 255-byte-named empty files until no inode is left)")
        print(f"sessions allowed: {allowed}; the next: {refusal or 'none refused'}")
        if before is not None and after is not None:
            held = (after - before) / 2**20
            print(f"held by the daemon's base cgroup after the requests: {held:.0f} MiB "
                  f"({held / max(allowed, 1):.1f} MiB a session; bound {args.bound} MiB)")
        print(f"host MemAvailable fell by {(avail0 - avail1) / 1024:.0f} MiB "
              "(other work on the machine moves this too)")
    finally:
        d.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["flood", "memory"])
    parser.add_argument("--driver", default="bubblewrap")
    parser.add_argument("--boxes", type=int, default=2)
    parser.add_argument("--flood", type=int, default=10000, help="requests the flood sends")
    parser.add_argument("--flood-seconds", type=float, default=20.0,
                        help="the flood is sent at an even pace over this long")
    parser.add_argument("--benign", type=int, default=100,
                        help="benign requests, one by one, at most (and only while the flood "
                        "is being sent)")
    parser.add_argument("--bound", type=int, default=1024,
                        help="--max-box-memory-mb (0: the daemon's default)")
    parser.add_argument("--disk-mb", type=int, default=64, help="run.disk_mb of each session")
    parser.add_argument("--sessions", type=int, default=64, help="most sessions to try")
    parser.add_argument("--daemon-arg", action="append", default=[], metavar="ARG")
    args = parser.parse_args()
    if args.what == "flood":
        run_flood(args)
    else:
        run_memory(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
