"""Several daemons behind HAProxy (deploy/haproxy/haproxy.cfg, run as it is): three real
daemons with their own state directories and box ranges, HAProxy on loopback, real Go programs.

Sessions stick to a daemon and anonymous requests spread; a rolling restart of every daemon
under steady load loses no request; a SIGKILLed daemon's requests end with a clear error at
the client, the others' are untouched, and its sessions go on elsewhere as new sessions.
Bounded: a few hundred requests at most, about a minute on two cores.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import HANG, ROOT, Client, Daemon, driver_missing, finals, go_main, output
from tests.system.test_listeners import free_port

HAPROXY = shutil.which("haproxy")
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
CLIENT = Path(sys.executable).parent / "sandboxd-client"
NODES = ("node-a", "node-b", "node-c")
DRAIN_S = 4  # what haproxy.cfg's checks need to see a 503 (its comment says why)
INSPECT_DELAY_S = 5  # haproxy.cfg's tcp-request inspect-delay
# Boxes first-box .. first-box + 3 x 2 boxes + sessions + 2 must fit the harness's 16-box range.
MAX_SESSIONS = 8

pytestmark = [
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed here, so the cluster "
                       "test did not run (scripts/sandbox-tools.sh --test installs Debian's)"),
    pytest.mark.skipif(driver_missing("bubblewrap") is not None,
                       reason=str(driver_missing("bubblewrap"))),
]

# Appends a line to a file in the session's box and prints how many lines it holds.
COUNTER = go_main(
    '\tf, err := os.OpenFile("/box/n", os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)\n'
    '\tif err != nil {\n\t\tpanic(err)\n\t}\n\tf.WriteString("x\\n")\n\tf.Close()\n'
    '\tb, _ := os.ReadFile("/box/n")\n\tfmt.Println(strings.Count(string(b), "\\n"))',
    imports=("fmt", "os", "strings"))
NAP = go_main('\ttime.Sleep(300 * time.Millisecond)\n\tfmt.Println("done")',
              imports=("fmt", "time"))
TICKS = go_main('\tfor i := 0; i < 30; i++ {\n\t\tfmt.Println("tick", i)\n'
                '\t\ttime.Sleep(100 * time.Millisecond)\n\t}', imports=("fmt", "time"))
FOREVER = go_main('\tfor i := 0; ; i++ {\n\t\tfmt.Println("tick", i)\n'
                  '\t\ttime.Sleep(100 * time.Millisecond)\n\t}', imports=("fmt", "time"))


class Cluster:
    """Three daemons and the HAProxy of deploy/haproxy/haproxy.cfg in front of them."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sandboxd-cluster-"))
        self.port, self.http_port = free_port(), free_port()
        self.admin = str(self.dir / "admin.sock")
        self.daemons: dict[str, Daemon] = {}
        self.env = {**os.environ, "SANDBOXD_BIND": f"127.0.0.1:{self.port}",
                    "SANDBOXD_HTTP_BIND": f"127.0.0.1:{self.http_port}",
                    "HAPROXY_ADMIN_SOCKET": self.admin, "HAPROXY_LOG": "stdout"}
        for node in NODES:
            port, health, web = free_port(), free_port(), free_port()
            self.daemons[node] = Daemon(
                "bubblewrap", f"--node-name={node}", f"--drain-time={DRAIN_S}",
                "--shutdown-grace=20", f"--max-sessions={MAX_SESSIONS}",
                f"--metrics=tcp:{health}:interface=127.0.0.1",
                f"--http=tcp:{web}:interface=127.0.0.1",
                listen=[f"tcp:{port}:interface=127.0.0.1"])
            key = node.replace("-", "_").upper()
            self.env[key] = f"127.0.0.1:{port}"
            self.env[f"{key}_HEALTH"] = str(health)
            self.env[f"{key}_HTTP"] = f"127.0.0.1:{web}"
        self.haproxy: subprocess.Popen | None = None
        self.log = self.dir / "haproxy.log"

    def start(self) -> None:
        for d in self.daemons.values():
            d.start()
        with open(self.log, "wb") as log:
            self.haproxy = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(CONFIG)], env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT)
        for node in NODES:
            self.wait_state(node, "UP")

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.terminate()
            self.haproxy.wait(timeout=HANG)
        for d in self.daemons.values():
            d.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- HAProxy's view -------------------------------------------------------------------

    def states(self) -> dict[str, str]:
        """Each daemon's state in HAProxy's session backend: UP, DOWN, ..."""
        text = self._admin("show stat\n")
        header = text.splitlines()[0].lstrip("# ").split(",")
        out = {}
        for line in text.splitlines()[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "by_session" and row.get("svname") in NODES:
                out[row["svname"]] = row["status"]
        return out

    def _admin(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(self.admin)
            s.sendall(command.encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.decode()

    def wait_state(self, node: str, state: str, seconds: float = 60) -> float:
        """Wait until HAProxy, by its checks alone, says ``state``; return how long it took."""
        start = time.monotonic()
        while True:
            try:
                if self.states().get(node, "").startswith(state):
                    return time.monotonic() - start
            except OSError:
                pass  # HAProxy not listening on its admin socket yet
            if time.monotonic() - start > seconds:
                raise AssertionError(f"HAProxy did not see {node} {state} in {seconds} s: "
                                     f"{self.states()}\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    # -- clients --------------------------------------------------------------------------

    def connect(self) -> Client:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=HANG)
        return Client(sock=sock)

    def run(self, request: dict[str, Any]) -> list[dict]:
        """One request on a connection of its own, as a client of the balancer: its events."""
        with self.connect() as client:
            client.send(request)
            client.shutdown_write()
            return client.read_all()

    def post(self, path: str, request: dict[str, Any],
             headers: dict[str, str] | None = None) -> dict:
        """One HTTP request to HAProxy's HTTP face on a connection of its own: the final
        event of its NDJSON answer (which must be complete: one final event, the last)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=HANG)
        try:
            conn.request("POST", path, json.dumps(request), headers or {})
            answer = conn.getresponse()
            events = [json.loads(line) for line in answer.read().splitlines() if line.strip()]
        finally:
            conn.close()
        assert answer.status == 200, (answer.status, events)
        assert [e.get("done") for e in events].count(True) == 1 and events[-1]["done"], events
        return events[-1]

    def run_open(self, request: dict[str, Any]) -> tuple[dict, float]:
        """One request on a connection that stays open (as sandboxd.api keeps it): its final
        event, and the seconds it took."""
        start = time.monotonic()
        with self.connect() as client:
            client.send(request)
            events = client.read_until_done(request["id"])
        return finals(events)[request["id"]], time.monotonic() - start


def session_first(request: dict[str, Any]) -> dict[str, Any]:
    """The request with session_id as its first key, as the docs and sandboxd.api send it."""
    if "session_id" not in request:
        return request
    return {"session_id": request["session_id"], **request}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def homes(cluster: Cluster) -> dict[str, str]:
    """Session id -> the daemon that serves it, for 8 sessions (each ran COUNTER 3 times)."""
    out = {}
    for i in range(8):
        sid = f"user_{i}"
        seen = []
        for n in (1, 2, 3):
            events = cluster.run(session_first({"id": f"{sid}-{n}", "code": COUNTER,
                                                "session_id": sid}))
            final = finals(events)[f"{sid}-{n}"]
            assert final["status"] == "ok", final
            seen.append((final["node"], output(events).strip(), final["session_new"]))
        # Every request of the session reached the same daemon and found its earlier files.
        node = seen[0][0]
        assert seen == [(node, "1", True), (node, "2", False), (node, "3", False)], (sid, seen)
        out[sid] = node
    return out


def test_sessions_stick_and_anonymous_requests_spread(cluster: Cluster, homes: dict[str, str]):
    # Sessions are spread by their hash: more than one daemon holds some.
    by_node = Counter(homes.values())
    assert len(by_node) >= 2, by_node
    # A session id given after other fields, still in the first line, routes the same way.
    sid, node = next(iter(homes.items()))
    late = finals(cluster.run({"id": "late", "code": COUNTER, "session_id": sid}))["late"]
    assert (late["status"], late["node"], late["session_new"]) == ("ok", node, False)

    # On a connection that stays open, HAProxy routes by the first line as soon as its newline
    # came: not after its 5 s inspect-delay (a rule waiting for bytes that never come).
    for request in ({"id": "open-a", "code": COUNTER},
                    {"session_id": sid, "id": "open-s", "code": COUNTER}):
        final, took = cluster.run_open(request)
        assert final["status"] == "ok" and took < INSPECT_DELAY_S - 1, (final, took)
    assert final["node"] == node
    # A line longer than HAProxy reads (16 KiB) is routed by its session too: the id is first.
    big = {"session_id": sid, "id": "big", "code": COUNTER + "// " + "x" * 20_000 + "\n"}
    final, _ = cluster.run_open(big)
    assert (final["status"], final["node"], final["session_new"]) == ("ok", node, False), final

    # Anonymous requests, each on its own connection, nine at once: every daemon gets some.
    results: list[dict] = []

    def one(i: int) -> None:
        results.append(finals(cluster.run({"id": f"anon-{i}", "code": NAP}))[f"anon-{i}"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
    assert [r["status"] for r in results] == ["ok"] * 9, results
    spread = Counter(r["node"] for r in results)
    assert set(spread) == set(NODES), spread
    assert all("session_new" not in r for r in results)


def test_http_and_websocket_sessions_reach_the_same_daemon(cluster: Cluster,
                                                           homes: dict[str, str]):
    from websockets.sync.client import connect

    for sid, node in list(homes.items())[:4]:
        # By header and by path: the daemon that holds the session's box for the line protocol.
        for how, path, headers in (("header", "/v1/run", {"Sandboxd-Session": sid}),
                                   ("path", f"/v1/sessions/{sid}/run", {})):
            final = cluster.post(path, {"id": f"{sid}-{how}", "code": COUNTER}, headers)
            assert (final["status"], final["node"], final["session_new"]) == (
                "ok", node, False), (how, final)
        # A WebSocket by ?session= (what a browser can give): one session per socket.
        with connect(f"ws://127.0.0.1:{cluster.http_port}/v1/ws?session={sid}",
                     open_timeout=30) as ws:
            ws.send(json.dumps({"session_id": sid, "id": "ws", "code": COUNTER}))
            while not (event := json.loads(ws.recv(timeout=HANG))).get("done"):
                pass
            ws.send("not json")  # a refused line names its daemon too
            refused = json.loads(ws.recv(timeout=HANG))
        assert (event["status"], event["node"], event["session_new"]) == ("ok", node, False)
        assert (refused["status"], refused["node"]) == ("bad_request", node), refused

    # Anonymous HTTP requests, nine at once: every daemon gets some.
    results: list[dict] = []

    def one(i: int) -> None:
        results.append(cluster.post("/v1/run", {"id": f"h-{i}", "code": NAP}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
    assert [r["status"] for r in results] == ["ok"] * 9, results
    assert set(Counter(r["node"] for r in results)) == set(NODES)


class Load:
    """Steady load through the balancer: ``workers`` clients, each sending one request after
    another, each on a new connection, anonymous and session requests in turn; the third
    client over the HTTP face."""

    def __init__(self, cluster: Cluster, workers: int = 3, most: int = 400) -> None:
        self.cluster = cluster
        self.most = most
        self.done: list[tuple[str, list[dict]]] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(w,)) for w in range(workers)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(HANG)

    def _work(self, worker: int) -> None:
        n = 0
        while not self.stopping.is_set() and len(self.done) < self.most:
            n += 1
            rid = f"w{worker}-{n}"
            request: dict[str, Any] = {"id": rid, "code": NAP}
            if n % 2:  # one session per client: a daemon holds at most MAX_SESSIONS
                request["session_id"] = f"load_{worker}"
            try:
                if worker == 2:  # the HTTP face: the session in the header
                    session = request.pop("session_id", None)
                    headers = {"Sandboxd-Session": session} if session else {}
                    self.done.append((rid, [self.cluster.post("/v1/run", request, headers)]))
                else:
                    self.done.append((rid, self.cluster.run(session_first(request))))
            except Exception as e:  # a lost request: the test reports it
                self.errors.append(f"{rid}: {type(e).__name__}: {e}")

    def served_by(self) -> Counter:
        return Counter(finals(events)[rid].get("node") for rid, events in self.done
                       if rid in finals(events))


def test_rolling_restart_under_load_loses_nothing(cluster: Cluster):
    with Load(cluster) as load:
        time.sleep(1)
        for node in NODES:
            d = cluster.daemons[node]
            before = len(load.done)
            assert d.stop() in (0, -signal.SIGTERM), d.log()[-3000:]  # drained, then ended
            # HAProxy took it out by its 503 while it drained; the load went on elsewhere.
            assert not cluster.states()[node].startswith("UP")
            assert len(load.done) > before
            d.start()
            cluster.wait_state(node, "UP")  # put back by HAProxy's checks alone
            served = load.served_by()[node]
            deadline = time.monotonic() + 30
            while load.served_by()[node] == served and time.monotonic() < deadline:
                time.sleep(0.1)  # new work reaches the restarted daemon again
            assert load.served_by()[node] > served, node
    assert not load.errors, load.errors
    statuses = Counter()
    for rid, events in load.done:
        got = finals(events)  # fails on two final events for one request
        assert list(got) == [rid], (rid, events)  # exactly one, and it is this request's
        statuses[got[rid]["status"]] += 1
    assert statuses == {"ok": len(load.done)}, statuses
    assert len(load.done) >= 30


def test_sigkill_ends_its_requests_clearly_and_leaves_the_others(cluster: Cluster,
                                                                 homes: dict[str, str]):
    # The victim: the daemon holding most of the test's sessions (two of them are used: the
    # requests of one session take turns, and these must run at once).
    victim, _ = Counter(homes.values()).most_common(1)[0]
    sid, web_sid = [s for s, node in homes.items() if node == victim][:2]
    home = {node: sid for sid, node in homes.items()}
    others = {node: s for node, s in home.items() if node != victim}

    # On the victim: the command-line client, like a user, through the balancer.
    src = cluster.dir / "forever.go"
    src.write_text(FOREVER)
    env = {**os.environ, "SANDBOXD_CONNECT": f"tcp:127.0.0.1:{cluster.port}"}
    cli = subprocess.Popen([str(CLIENT), "run", "--session", sid, str(src)], env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    # On the victim too: an NDJSON answer over the HTTP face, the session in the header.
    web = http.client.HTTPConnection("127.0.0.1", cluster.http_port, timeout=HANG)
    web.request("POST", "/v1/run", json.dumps({"id": "web", "code": FOREVER}),
                {"Sandboxd-Session": web_sid})
    streamed = web.getresponse()
    assert streamed.status == 200
    assert json.loads(streamed.readline())["output"] == "tick 0\n"
    # On the others: a running session request each.
    clients = {}
    for node, s in others.items():
        c = cluster.connect()
        c.send(session_first({"id": f"other-{node}", "code": TICKS, "session_id": s}))
        c.shutdown_write()
        clients[node] = c
    assert cli.stdout is not None and cli.stdout.readline() == b"tick 0\n"
    for c in clients.values():
        first = c.read_event()
        while first is not None and first.get("output") == "":  # keep-alive probes
            first = c.read_event()
        assert first is not None and first.get("output") == "tick 0\n", first

    cluster.daemons[victim].proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]

    # The victim's client is told, in words, that the request did not end and why.
    _, err = cli.communicate(timeout=HANG)
    assert cli.returncode == 1, err
    message = err.decode()
    assert "before request 'run" in message and "killed" in message, message
    assert "Traceback" not in message
    # The NDJSON answer ends without a final event. (HAProxy may end the chunked body as if
    # it were complete: only the missing final event tells.)
    try:
        rest = streamed.read()
    except http.client.IncompleteRead as e:
        rest = e.partial
    lines = [json.loads(line) for line in rest.splitlines() if line.strip()]
    assert lines and not any(e.get("done") for e in lines), rest[-500:]
    web.close()
    # The others' requests are untouched: every tick, and their final events.
    for node, c in clients.items():
        events = c.read_all()
        done = finals(events)[f"other-{node}"]
        assert (done["status"], done["node"]) == ("ok", node), done
        assert output(events) == "".join(f"tick {i}\n" for i in range(30))
        c.close()

    # The victim's session goes on elsewhere, as a new session; HAProxy takes the victim out.
    moved = finals(cluster.run(session_first({"id": "moved", "code": COUNTER,
                                              "session_id": sid})))["moved"]
    assert moved["status"] == "ok" and moved["node"] != victim, moved
    assert moved["session_new"] is True
    cluster.wait_state(victim, "DOWN")

    # Started again (it cleans up after its killed self), it is put back by HAProxy alone, and
    # the session comes back to it: new again, and saying so.
    cluster.daemons[victim].stop()
    cluster.daemons[victim].start()
    cluster.wait_state(victim, "UP")
    back = finals(cluster.run(session_first({"id": "back", "code": COUNTER,
                                             "session_id": sid})))["back"]
    assert (back["status"], back["node"], back["session_new"]) == ("ok", victim, True), back


def test_a_daemon_failing_its_checks_is_taken_out_and_put_back_by_haproxy_alone(
        cluster: Cluster):
    node = "node-b"
    pid = cluster.daemons[node].proc.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGSTOP)  # hung: its /healthz no longer answers
    try:
        cluster.wait_state(node, "DOWN", 30)
        served = [finals(cluster.run({"id": f"out-{i}", "code": NAP}))[f"out-{i}"]
                  for i in range(6)]
        assert all(f["status"] == "ok" for f in served), served
        assert node not in {f["node"] for f in served}
    finally:
        os.kill(pid, signal.SIGCONT)
    cluster.wait_state(node, "UP", 30)
    served = [finals(cluster.run({"id": f"back-{i}", "code": NAP}))[f"back-{i}"]
              for i in range(6)]
    assert node in {f["node"] for f in served}, served
