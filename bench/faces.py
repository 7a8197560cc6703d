#!/usr/bin/env python3
"""How long an output event takes from the daemon's read to the client, by face: the line
protocol (Unix socket), NDJSON over HTTP (``POST /v1/run``) and WebSocket (``/v1/ws``).

A program prints a line every 50 ms; each event's ``timestamp`` (when the daemon read the chunk)
is compared with the client's clock when the event arrived.  Same machine, so one clock.
Figures are medians and 95th percentiles over all events of ``--rounds`` runs per face, faces
interleaved round by round.  See docs/http.md.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.httpface import RawHTTP, http_daemon  # noqa: E402

CODE = ('package main\nimport ("fmt";"time")\nfunc main(){for i:=0;i<40;i++{fmt.Println(i);'
        'time.Sleep(50*time.Millisecond)}}\n')


def over_line(sock_path: str, port: int) -> list[float]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        s.sendall(json.dumps({"code": CODE}).encode() + b"\n")
        out = []
        for line in s.makefile("rb"):
            now = time.time() * 1000
            event = json.loads(line)
            if event.get("done"):
                return out
            out.append(now - int(event["timestamp"]))
    return out


def over_http(sock_path: str, port: int) -> list[float]:
    conn = RawHTTP(port)
    conn.request("POST", "/v1/run", json.dumps({"code": CODE}).encode())
    conn.head()
    out, pending = [], b""
    for _, chunk in conn.chunks():
        now = time.time() * 1000
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            event = json.loads(line)
            if not event.get("done"):
                out.append(now - int(event["timestamp"]))
    conn.close()
    return out


def over_websocket(sock_path: str, port: int) -> list[float]:
    from websockets.sync.client import connect

    out = []
    with connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
        ws.send(json.dumps({"code": CODE}))
        while True:
            event = json.loads(ws.recv())
            now = time.time() * 1000
            if event.get("done"):
                return out
            out.append(now - int(event["timestamp"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    faces: dict[str, Callable[[str, int], list[float]]] = {
        "line (unix socket)": over_line, "HTTP NDJSON": over_http, "WebSocket": over_websocket}
    daemon, port = http_daemon()
    try:
        for face in faces.values():  # warm: the program is built once, then cached
            face(daemon.socket_path, port)
        seen: dict[str, list[float]] = {name: [] for name in faces}
        for _ in range(args.rounds):
            for name, face in faces.items():
                seen[name] += face(daemon.socket_path, port)
    finally:
        daemon.cleanup()
    print(f"{'face':<20} {'events':>6} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    for name, values in seen.items():
        values.sort()
        print(f"{name:<20} {len(values):>6} {statistics.median(values):>10.2f} "
              f"{values[int(len(values) * 0.95)]:>8.2f} {values[-1]:>8.1f}")


if __name__ == "__main__":
    main()
