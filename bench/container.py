#!/usr/bin/env python3
"""The container's figures (issue 16): image size, ``docker run`` to the first answer (cold and
warm cache volume), and a cached program's latency inside the container against the host.

Run after ``make image`` (or ``tests/system/test_container.py``, which builds ``sandboxd:test``):

    .venv/bin/python bench/container.py [--image sandboxd:test] [--rounds 5] [--per-round 10]

Uses the narrower privilege set of docs/operations.md. The host side is a daemon of this
checkout (bubblewrap, cgroup v1 here, like the container) listening on TCP loopback; the
container is reached both through the published port (docker's userland proxy) and at its own
bridge address. Rounds are interleaved so drift on a shared machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import Client, Daemon, go_main  # noqa: E402
from tests.system.test_container import ARGS, NARROW  # noqa: E402

HELLO = go_main('\tfmt.Println("hello")')


def sh(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()


def request(host: str, port: int, timeout: float = 120) -> float:
    """Seconds from connecting to the final event of HELLO (a cached program once warm)."""
    t0 = time.perf_counter()
    sock = socket.create_connection((host, port), timeout=timeout)
    with Client(sock=sock) as client:
        client.send({"code": HELLO})
        client.shutdown_write()
        events = client.read_all(timeout)
    elapsed = time.perf_counter() - t0
    final = events[-1]
    assert final.get("done") and final["status"] == "ok", events
    return elapsed


def first_answer(engine: str, image: str, volume: str, name: str) -> tuple[float, str, int]:
    """docker run → the first event of a request; returns (seconds, bridge IP, published port)."""
    subprocess.run([engine, "rm", "-f", name], capture_output=True)
    t0 = time.perf_counter()
    sh(engine, "run", "-d", "--name", name, *NARROW, "-p", "127.0.0.1::8080",
       "-v", f"{volume}:/var/cache/sandboxd", image, *ARGS)
    port = int(sh(engine, "port", name, "8080/tcp").split()[0].rsplit(":", 1)[1])
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=900)
            with Client(sock=sock) as client:
                client.send({"code": HELLO})
                client.shutdown_write()
                if client.read_event(900) is not None:
                    elapsed = time.perf_counter() - t0
                    client.read_all(120)
                    break
        except OSError:
            pass
        time.sleep(0.1)
    ip = sh(engine, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            name)
    return elapsed, ip, port


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="sandboxd:test")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--warm-starts", type=int, default=3)
    a = ap.parse_args()
    engine = sh("bash", str(ROOT / "scripts/container-engine.sh"))
    size = int(sh(engine, "image", "inspect", "-f", "{{.Size}}", a.image))
    print(f"engine {engine}; image {a.image}: {size / 1e6:.0f} MB")
    volume, name = "sandboxd-bench-cache", "sandboxd-bench"
    subprocess.run([engine, "rm", "-f", name], capture_output=True)
    subprocess.run([engine, "volume", "rm", "-f", volume], capture_output=True)
    sh(engine, "volume", "create", volume)
    daemon = None
    try:
        cold, _, _ = first_answer(engine, a.image, volume, name)
        print(f"docker run -> first answer, cold cache volume: {cold:.1f} s")
        warm = []
        for _ in range(a.warm_starts):
            t, ip, port = first_answer(engine, a.image, volume, name)
            warm.append(t)
        print("docker run -> first answer, warm cache volume: "
              f"median {statistics.median(warm):.2f} s ({', '.join(f'{t:.2f}' for t in warm)})")
        daemon = Daemon("bubblewrap", listen=["tcp:0:interface=127.0.0.1"]).start()
        host_port = 0
        deadline = time.monotonic() + 60
        while not host_port:
            for line in daemon.log().splitlines():
                if "listening on IPv4Address" in line:
                    host_port = int(line.rsplit("port=", 1)[1].rstrip(")"))
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.1)
        sides = {"host": ("127.0.0.1", host_port),
                 "container (published port)": ("127.0.0.1", port),
                 "container (bridge IP)": (ip, 8080)}
        times: dict[str, list[float]] = {k: [] for k in sides}
        for host, p in sides.values():
            request(host, p)  # built and cached
        for _ in range(a.rounds):
            for k, (host, p) in sides.items():
                times[k] += [request(host, p) for _ in range(a.per_round)]
        base = statistics.median(times["host"])
        for k, ts in times.items():
            med = statistics.median(ts)
            print(f"cached program, {k}: median {med * 1000:.1f} ms over {len(ts)}"
                  f" (ratio to host {med / base:.2f})")
    finally:
        if daemon is not None:
            daemon.cleanup()
        subprocess.run([engine, "rm", "-f", name], capture_output=True)
        subprocess.run([engine, "volume", "rm", "-f", volume], capture_output=True)


if __name__ == "__main__":
    main()
