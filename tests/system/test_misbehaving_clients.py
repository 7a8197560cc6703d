"""Misbehaving clients against a real daemon: vanished, not reading, flooding the queue, idle
by the hundred, and every kind of bad input.  No client ever sees a traceback."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

import pytest

from tests.harness import Daemon, finals, go_main, output
from tests.hostile import box_uids, processes_of, program

HELLO = go_main('\tfmt.Println("hello")')
MAX_LINE = 64 * 1024
MAX_SOURCE = 16 * 1024
MAX_CONN = 100


@pytest.fixture(scope="module")
def daemon(driver: str):
    d = Daemon(driver, f"--max-line-bytes={MAX_LINE}", f"--max-source-bytes={MAX_SOURCE}",
               "--max-queue=3", "--max-pending-input-mb=1", f"--max-connections={MAX_CONN}",
               boxes=2).start()
    try:
        yield d
    finally:
        d.cleanup()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def small_window(daemon: Daemon) -> socket.socket:
    """A client connection with a 4 KiB receive buffer: what it does not read backs up fast."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(daemon.socket_path)
    return sock


def thread_waits(pid: int) -> str:
    """What each thread of ``pid`` sleeps in.  The goroutine that writes may be on any thread
    of a Go program, so the leader's own /proc/PID/wchan is not enough."""
    waits = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            waits.append((task / "wchan").read_text())
    return " ".join(waits)


def no_traceback(events: list[dict]) -> None:
    text = json.dumps(events)
    assert "Traceback" not in text and 'File "' not in text


def test_vanished_client_frees_its_box_within_a_second(daemon):
    sleeper = go_main('\tfmt.Println("up")\n\ttime.Sleep(time.Hour)', imports=("fmt", "time"))
    clients = [daemon.connect() for _ in range(2)]  # both boxes taken
    for i, c in enumerate(clients):
        c.send({"code": sleeper, "id": f"s{i}", "limits": {"wall_ms": 60000}})
        assert c.read_event()["output"] == "up\n"
    assert processes_of(box_uids(daemon))
    gone = time.monotonic()
    for c in clients:
        c.close()
    deadline = gone + 1.0
    while processes_of(box_uids(daemon)) and time.monotonic() < deadline + 2:
        time.sleep(0.02)
    left_at = time.monotonic() - gone
    print(f"boxes of a vanished client freed after {left_at:.3f} s")
    assert not processes_of(box_uids(daemon)), "box processes still there"
    assert left_at < 1.0, f"boxes freed after {left_at:.2f} s"
    start = time.monotonic()
    events = daemon.run({"code": HELLO, "id": "next"})
    assert finals(events)["next"]["status"] == "ok"
    assert time.monotonic() - start < 20
    assert "request s0" in daemon.log() and "status=cancelled" in daemon.log()


def test_non_reading_client_does_not_grow_the_daemon(daemon):
    pid = daemon.proc.pid
    idle = rss_kb(pid)
    sock = small_window(daemon)
    request = {"files": program("flood"), "id": "flood",
               "limits": {"output_bytes": 64 * 1024 * 1024, "wall_ms": 3000}}
    sock.sendall(json.dumps(request).encode() + b"\n")
    peak = idle
    blocked = set()
    for _ in range(40):  # 4 s of not reading while the program floods: past its wall time
        time.sleep(0.1)
        peak = max(peak, rss_kb(pid))
        for proc in processes_of(box_uids(daemon)):
            if proc.endswith(" main") and "pipe" in thread_waits(int(proc.split()[0])):
                blocked.add(proc)
    # The program itself was seen blocked writing to its unread pipe: it was paused.
    assert blocked, "the flooding program was never seen blocked on its pipe"
    # The flooder is paused, so unsent output stays small; 64 MiB would have been possible.
    grown = peak - idle
    # Its wall time ran out while it was paused, and the request ended (its box freed)
    # although the client still has not read a byte.
    assert "request flood " in daemon.log() and "status=timeout" in daemon.log()
    print(f"daemon RSS idle {idle} kB, peak while flooded {peak} kB (+{grown} kB)")
    assert grown < 32 * 1024, (idle, peak)
    sock.setblocking(True)
    sock.settimeout(60)
    got, data = 0, b""
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
        data = (data + chunk)[-4096:]
        if b'"done":true' in data:
            break
    sock.close()
    final = json.loads(data.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    # The wall-time limit kept running while the child was paused.
    assert final["status"] == "timeout" and "wall" in final["message"], final
    assert final["output_bytes"] < 32 * 1024 * 1024


def test_queue_full_at_once(daemon):
    sleeper = go_main('\ttime.Sleep(time.Second)', imports=("time",))
    with daemon.connect() as c:
        for i in range(7):  # 2 running, 3 waiting, 2 refused
            c.send({"code": sleeper, "id": f"q{i}", "limits": {"wall_ms": 10000}})
        start = time.monotonic()
        refused = []
        while len(refused) < 2:
            event = c.read_event(timeout=10)
            if event.get("status") == "queue_full":
                refused.append(event)
        assert time.monotonic() - start < 1.5
        c.shutdown_write()
        events = c.read_all()
    done = finals(events)
    assert sorted(s["status"] for s in done.values()) == ["ok"] * 5 + ["queue_full"] * 2
    assert all("queue" in e["message"] for e in refused)


def test_hundreds_of_idle_connections_do_not_keep_a_request_out(daemon):
    idle = []
    try:
        for i in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(daemon.socket_path)  # no retry: a shallow backlog would fail here
            if i % 2:
                s.sendall(b'{"code": "package main", "id": "half')  # a half-sent line
            idle.append(s)
        start = time.monotonic()
        events = daemon.run({"code": HELLO, "id": "real"})
        assert finals(events)["real"]["status"] == "ok"
        assert output(events, "real") == "hello\n"
        assert time.monotonic() - start < 30
        # Past --max-connections the connections idle longest were closed to make room:
        # the first ones, never the newest.
        closed = []
        for s in idle:
            s.settimeout(0.05)
            try:
                closed.append(s.recv(1) == b"")
            except TimeoutError:
                closed.append(False)
            except ConnectionResetError:
                closed.append(True)
        assert sum(closed) >= len(idle) - MAX_CONN + 1, sum(closed)
        assert not any(closed[-MAX_CONN // 2:]), closed
    finally:
        for s in idle:
            s.close()


DEEP = "[" * 30_000 + "]" * 30_000

BAD_LINES = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'"a string"', "JSON object"),
    (b"42", "JSON object"),
    (b"null", "JSON object"),
    (b'{"id": "x\xff", "code": "y"}', "UTF-8"),
    (b'{"id": 5, "code": "package main"}', "'id'"),
    (b'{"id": "m1"}', "'code'"),
    (b'{"id": "m2", "code": 7}', "'code'"),
    (b'{"id": "m3", "code": "x", "files": {"a.go": "x"}}', "either"),
    (b'{"id": "u1", "code": "x", "colour": "red"}', "unknown field"),
    (b'{"id": "u2", "type": "format", "code": "x"}', "unknown request type"),
    (b'{"id": "u3", "type": 3, "code": "x"}', "'type'"),
    (b'{"id": "p1", "code": "x", "session_id": "../../etc"}', "session_id"),
    (b'{"id": "p2", "code": "x", "session_id": "/abs"}', "session_id"),
    (b'{"id": "p3", "code": "x", "session_id": ""}', "session_id"),
    (b'{"id": "p4", "code": "x", "session_id": 12}', "session_id"),
    (b'{"id": "f1", "files": {"../main.go": "x"}}', "not allowed"),
    (b'{"id": "f2", "files": {"/etc/passwd": "x"}}', "not allowed"),
    (b'{"id": "f3", "files": {"a/../../b.go": "x"}}', "not allowed"),
    (b'{"id": "f4", "files": {"a\\u0000b.go": "x"}}', "not allowed"),
    (b'{"id": "f5", "files": {}}', "files"),
    (b'{"id": "f6", "files": {"main.go": 5}}', "must be a string"),
    (b'{"id": "f7", "files": ["main.go"]}', "files"),
    (DEEP.encode(), "nested too deeply"),
    (b'{"id": "d1", "code": "x", "limits": ' + b'{"a": ' * 40 + b"1" + b"}" * 41,
     "nested too deeply"),
    (b'{"id": "l1", "code": "x", "limits": {"wall_ms": -1}}', "wall_ms"),
    (b'{"id": "l2", "code": "x", "limits": {"wall_ms": 99999999999}}', "maximum"),
    (b'{"id": "l3", "code": "x", "limits": {"memory_mb": "lots"}}', "whole number"),
    (b'{"id": "l4", "code": "x", "limits": {"memory_mb": 1.5}}', "whole number"),
    (b'{"id": "l5", "code": "x", "limits": {"memory_mb": true}}', "whole number"),
    (b'{"id": "l6", "code": "x", "limits": {"build": {"nope": 1}}}', "unknown limit"),
    (b'{"id": "l7", "code": "x", "limits": {"run": 5}}', "must be an object"),
    (b'{"id": "l8", "code": "x", "limits": [1]}', "must be an object"),
    (b'{"id": "l9", "code": "x", "limits": {"output_bytes": 1e400}}', "whole number"),
    (b'{"id": "l10", "code": "x", "limits": {"processes": 0}}', "processes"),
]


def test_bad_input_gets_bad_request_and_the_connection_keeps_working(daemon):
    with daemon.connect() as c:
        for line, _ in BAD_LINES:
            c.send(line + b"\n")
        c.send({"code": HELLO, "id": "after"})
        c.shutdown_write()
        events = c.read_all()
    no_traceback(events)
    bad = [e for e in events if e.get("done") and e["status"] == "bad_request"]
    assert len(bad) == len(BAD_LINES), [e["message"] for e in bad]
    for event, (line, expected) in zip(bad, BAD_LINES, strict=True):
        assert expected in event["message"], (line[:80], event["message"])
        assert event["phase"] == "queue" and event["exec_err"] == event["message"]
    assert finals(events)["after"]["status"] == "ok"


def test_over_long_line_and_oversized_code_are_refused_clearly(daemon):
    too_long = json.dumps({"id": "long", "code": "x" * (MAX_LINE * 2)}).encode()
    too_big = json.dumps({"id": "big", "code": "// " + "y" * MAX_SOURCE}).encode()
    assert len(too_big) < MAX_LINE
    with daemon.connect() as c:
        c.send(too_long[:MAX_LINE // 2])  # arrives in pieces
        time.sleep(0.1)
        c.send(too_long[MAX_LINE // 2:] + b"\n")
        c.send(too_big + b"\n")
        c.send({"code": HELLO, "id": "after"})
        c.shutdown_write()
        events = c.read_all()
    no_traceback(events)
    bad = [e for e in events if e.get("done") and e["status"] == "bad_request"]
    assert len(bad) == 2, bad
    assert "longer than" in bad[0]["message"] and str(MAX_LINE) in bad[0]["message"]
    assert bad[1]["id"] == "big" and "larger than" in bad[1]["message"]
    assert finals(events)["after"]["status"] == "ok"


def test_a_client_that_sends_but_never_reads_does_not_grow_the_daemon(daemon):
    pid = daemon.proc.pid
    idle = rss_kb(pid)
    sock = small_window(daemon)
    sock.settimeout(0.5)
    line = b'{"id": "' + b"x" * 100 + b'", "oops": 1}\n'  # each answered with bad_request
    sent = 0
    try:
        for _ in range(200_000):  # ~25 MB of answers if the daemon kept reading
            sock.sendall(line * 10)
            sent += 10
    except (TimeoutError, BlockingIOError):
        pass  # the daemon stopped reading: what we want
    time.sleep(0.5)
    grown = rss_kb(pid) - idle
    print(f"sent {sent} lines without reading; daemon RSS +{grown} kB")
    sock.close()
    assert grown < 16 * 1024, grown
    events = daemon.run({"code": HELLO, "id": "after"})
    assert finals(events)["after"]["status"] == "ok"


def test_unfinished_lines_of_all_connections_are_bounded(daemon):
    # 1 MiB of unfinished input at most (--max-pending-input-mb=1), lines up to 64 KiB.
    part = b'{"id": "slow", "code": "' + b"x" * (MAX_LINE - 1000)
    holders = [daemon.connect() for _ in range(24)]
    try:
        for c in holders:
            c.send(part)
        time.sleep(0.5)
        refused = []
        for c in holders:
            c.sock.settimeout(0.2)
            try:
                refused.append(c.read_event(timeout=0.2))
            except (TimeoutError, OSError):
                pass
        # Some unfinished lines were refused with a clear message; the rest wait, held.
        assert refused and all(e["status"] == "bad_request" and "unfinished input"
                                in e["message"] for e in refused), refused
        assert len(refused) < len(holders)
        events = daemon.run({"code": HELLO, "id": "real"})
        assert finals(events)["real"]["status"] == "ok"
    finally:
        for c in holders:
            c.close()


def test_random_garbage_lines_each_get_one_bad_request(daemon):
    import random

    rng = random.Random(1234)
    pieces = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"\\", b"null", b"true", b"1e999",
              b'"id"', b'"code"', b'"files"', b'"limits"', b'"session_id"', b'"type"',
              b"\xff", b"\x00", b"\xe2\x82", b" ", b"-0", b"{}", b'"run"']
    lines = []
    for _ in range(300):
        line = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
        lines.append(line.replace(b"\n", b""))
    lines = [ln for ln in lines if ln.strip()]
    with daemon.connect() as c:
        for line in lines:
            c.send(line + b"\n")
        c.send({"code": HELLO, "id": "after"})
        c.shutdown_write()
        events = c.read_all()
    no_traceback(events)
    done = [e for e in events if e.get("done")]
    assert len(done) == len(lines) + 1
    assert all(e["status"] == "bad_request" and e["message"] for e in done[:-1])
    assert done[-1]["id"] == "after" and done[-1]["status"] == "ok"


@contextlib.contextmanager
def tcp_daemon(driver: str):
    """A one-box daemon that also listens on a free loopback TCP port: (daemon, port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    d = Daemon(driver, boxes=1, listen=[f"tcp:{port}:interface=127.0.0.1"]).start()
    try:
        yield d, port
    finally:
        d.cleanup()


def test_tcp_client_that_closed_after_its_request_frees_its_box_soon(driver):
    """A TCP close looks like a half-close until the server writes; it probes, then cancels."""
    with tcp_daemon(driver) as (d, port):
        sleeper = go_main('\tfmt.Println("up")\n\ttime.Sleep(time.Hour)',
                          imports=("fmt", "time"))
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(json.dumps({"code": sleeper, "id": "t", "limits": {"wall_ms": 60000}})
                     .encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)  # like nc -N: end of input
        buffer = b""
        while b'"up\\n"' not in buffer:
            chunk = sock.recv(65536)
            assert chunk, buffer  # ended before the program started (it spun here for ever)
            buffer += chunk
        assert processes_of(box_uids(d))
        gone = time.monotonic()
        sock.close()  # and now the client is gone for good (a FIN, no reset)
        while processes_of(box_uids(d)) and time.monotonic() - gone < 10:
            time.sleep(0.02)
        left_at = time.monotonic() - gone
        print(f"boxes of a closed TCP client freed after {left_at:.3f} s")
        # found at the first probe: PROBE_S (1.5 s) of silence, then a look every 0.2 s
        assert not processes_of(box_uids(d)) and left_at < 2.5, left_at
        while "status=cancelled" not in d.log() and time.monotonic() - gone < 10:
            time.sleep(0.02)  # the request's log line follows its box's end by a moment
        assert "request t " in d.log() and "status=cancelled" in d.log()


def test_tcp_half_close_still_gets_every_event(driver):
    """The probes a half-closed TCP client gets are spaces before a line (JSON whitespace):
    no event to skip, and none at all while the program is not silent for long."""
    with tcp_daemon(driver) as (_, port):
        slow = go_main('\ttime.Sleep(2500 * time.Millisecond)\n\tfmt.Println("late")',
                       imports=("fmt", "time"))
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(json.dumps({"code": slow, "id": "h"}).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        lines = data.splitlines()
        events = [json.loads(line) for line in lines]
        assert finals(events)["h"]["status"] == "ok" and output(events, "h") == "late\n"
        assert len(events) == 2, events  # "late", the final event: no empty output events
        assert lines[0].startswith(b" ") and lines[0].lstrip().startswith(b"{"), lines
