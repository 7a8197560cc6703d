"""Running sandboxd as a service: metrics and health over HTTP, SIGTERM with running requests,
restart after SIGKILL, the systemd units, JSON logs. Real daemons, real Go programs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import HANG, ROOT, TWISTD, Client, Daemon, finals, go_main, output
from tests.system.test_listeners import first_driver, free_port

TICKS = go_main('\tfor i := 0; ; i++ {\n\t\tfmt.Println("tick", i)\n'
                '\t\ttime.Sleep(100 * time.Millisecond)\n\t}', imports=("fmt", "time"))
SHORT = go_main('\tfmt.Println("started")\n\ttime.Sleep(1500 * time.Millisecond)\n'
                '\tfmt.Println("finished")', imports=("fmt", "time"))
HELLO = go_main('\tfmt.Println("hello")')
# Writes once, then sleeps: it is not ended by a broken pipe when the daemon dies.
QUIET = go_main('\tfmt.Println("started")\n\ttime.Sleep(100 * time.Second)',
                imports=("fmt", "time"))
BROKEN = go_main('\tfmt.Println(undefinedName)')


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=HANG) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    status, text = http_get(port, "/metrics")
    assert status == 200
    got = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:  # each names its daemon (--node-name); keyed without it
            labels = dict(s.labels)
            assert labels.pop("node", None), f"{s.name} has no node label"
            got[(s.name, tuple(sorted(labels.items())))] = s.value
    return got


def wait_for(condition, what: str, seconds: float = HANG) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def read_until_output(client: Client, request_id: str) -> None:
    while True:
        event = client.read_event()
        assert event is not None, "connection closed early"
        if event["id"] == request_id and not event.get("done"):
            return


# -- what a daemon leaves behind -------------------------------------------------------------

def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, uid, command line) of every live (not zombie) process."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").split()[:1] == ["Z"]:
            continue  # dead, waiting to be reaped by whoever adopted it: holds nothing
        out[int(pid)] = (int(fields["PPid"]), int(fields["Uid"].split()[0]), cmdline)
    return out


def leftovers(d: Daemon, before: bool = False) -> dict[str, list[str]]:
    """What of this daemon is still there: box processes (a sandbox tool whose command line
    names the state directory or that is in one of its cgroups, and everything under it),
    mounts, cgroups. Other daemons on the machine (other test runs) have other state
    directories and are not counted.

    ``before``: only what an earlier daemon of this state directory left, not what the one
    running now has (its builds held ahead: a launcher each, their cgroups and mounts)."""
    from sandboxd.service.assemble import instance_name

    state = str(d.state_dir)
    table = _processes()
    running = d.proc.pid if before and d.proc is not None and d.proc.poll() is None else None
    name = f"sandboxd-{instance_name(d.state_dir)}"
    # bwrap takes its options (the state directory's paths) on a descriptor: a box's sandbox
    # tool is known by its cgroup (names: "{phase}-{daemon pid}-...").
    in_cgroup = set()
    for pid in table:
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        if f"/{name}/" in text and not (running and f"-{running}-" in text):
            in_cgroup.add(pid)

    def ours(pid: int) -> bool:
        named = False
        for _ in range(16):  # a box's program is a child or grandchild of its sandbox tool
            if pid not in table:
                return named
            if pid == running:
                return False
            ppid, _, cmdline = table[pid]
            if state in cmdline or pid in in_cgroup:
                if "twistd" in cmdline:
                    return named
                named = True
                if running is None:
                    return True
            pid = ppid
        return named

    procs = [f"{pid} ppid={table[pid][0]} uid={table[pid][1]} {table[pid][2][:160]}"
             for pid in table if ours(pid)]
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(state)]
    cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob(f"**/{name}/*")
               if p.is_dir() and not (running and f"-{running}-" in p.name)]
    if running:  # its builds held ahead, and the toolchain images it mounted at start
        mounts = [m for m in mounts if "/jobs/ahead-" not in m and "/toolchains/" not in m]
    return {"processes": procs, "mounts": mounts, "cgroups": cgroups}


def assert_clean(d: Daemon) -> None:
    left = leftovers(d)
    assert left == {"processes": [], "mounts": [], "cgroups": []}, left


# -- metrics and health ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def metered():
    port = free_port()
    d = Daemon(first_driver(), f"--metrics=tcp:{port}:interface=127.0.0.1", boxes=1)
    d.metrics_port = port
    try:
        d.start()
        wait_for(lambda: _accepts(port), "the metrics port")
        yield d
    finally:
        d.cleanup()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_healthz_runs_a_program_in_a_box(metered: Daemon):
    status, body = http_get(metered.metrics_port, "/healthz")
    assert status == 200, body
    assert body.startswith("ok: a box ran /bin/true")
    status, _ = http_get(metered.metrics_port, "/nothing-here")
    assert status == 404


def test_metrics_after_requests(metered: Daemon):
    port = metered.metrics_port
    before = scrape(port)
    events = metered.run({"id": "h1", "code": HELLO}, {"id": "h2", "code": HELLO},
                         {"id": "b1", "code": BROKEN})
    done = finals(events)
    assert [done[i]["status"] for i in ("h1", "h2", "b1")] == ["ok", "ok", "compile_error"]

    # While one request runs in a session and another waits (--boxes=1): the gauges.
    with metered.connect() as client:
        client.send({"id": "t1", "code": TICKS, "session_id": "metrics-s"})
        read_until_output(client, "t1")
        client.send({"id": "t2", "code": TICKS})
        wait_for(lambda: scrape(port)[("sandboxd_queue_length", ())] == 1, "a queued request")
        live = scrape(port)
        assert live[("sandboxd_busy_boxes", ())] == 1
        assert live[("sandboxd_sessions", ())] == 1
        assert live[("sandboxd_boxes", ())] == 1
        assert live[("sandboxd_connections", ())] >= 1
    wait_for(lambda: scrape(port)[("sandboxd_busy_boxes", ())] == 0, "the box to be freed")

    after = scrape(port)

    def grew(name: str, labels: tuple = ()) -> float:
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert grew("sandboxd_requests_total", (("status", "ok"),)) == 2
    assert grew("sandboxd_requests_total", (("status", "compile_error"),)) == 1
    assert grew("sandboxd_requests_total", (("status", "cancelled"),)) == 2  # t1, t2
    # h1 and h2 are the same program: one build, then a hit or a shared build.
    cache = {r: grew("sandboxd_build_cache_total", (("result", r),))
             for r in ("hit", "shared", "miss")}
    assert cache["hit"] + cache["shared"] >= 1 and cache["miss"] >= 2, cache
    assert grew("sandboxd_build_seconds_count") >= 2  # HELLO and BROKEN were built
    assert grew("sandboxd_build_seconds_sum") > 0
    assert grew("sandboxd_run_seconds_count") >= 3  # h1, h2, t1
    streamed = sum(len(e.get("output", "")) for e in events if not e.get("done"))
    assert grew("sandboxd_output_bytes_total") >= streamed > 0
    assert after[("sandboxd_binary_cache_bytes", ())] > 0


# -- SIGTERM and SIGKILL ---------------------------------------------------------------------

def test_sigterm_drains_then_cancels_and_cleans(driver: str):
    port = free_port()
    d = Daemon(driver, "--shutdown-grace=3", f"--metrics=tcp:{port}:interface=127.0.0.1")
    try:
        d.start()
        busy, idle = d.connect(), d.connect()
        busy.send({"id": "short", "code": SHORT})
        busy.send({"id": "long", "code": TICKS, "session_id": "term-s"})
        read_until_output(busy, "short")
        read_until_output(busy, "long")
        assert d.proc is not None
        signalled = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)

        # No new connections; health says 503 while running requests drain.
        wait_for(lambda: _refused(d.socket_path), "the listener to close", 10)
        status, body = http_get(port, "/healthz")
        assert status == 503 and "shutting down" in body
        # A new request on an open connection is not started.
        idle.send({"id": "late", "code": HELLO})
        late = idle.read_until_done("late")
        assert finals(late)["late"]["status"] == "cancelled"
        assert "shutting down" in finals(late)["late"]["message"]
        assert idle.read_event() is None  # then the server closes the connection

        events = busy.read_all()  # to EOF: the server closes after the final events
        ended = time.monotonic() - signalled
        done = finals(events)
        assert done["short"]["status"] == "ok"  # finished within the grace period
        assert output(events, "short") == "started\nfinished\n"
        assert done["long"]["status"] == "cancelled"
        assert "shutting down" in done["long"]["message"]
        assert "grace" in done["long"]["message"]
        assert ended >= 2.5  # the long one was given its grace period
        # twistd ends by its signal once shut down (systemd counts that as a clean stop).
        assert d.proc.wait(timeout=HANG) in (0, -signal.SIGTERM)
        busy.close()
        idle.close()
        assert_clean(d)
    finally:
        d.cleanup()


def _refused(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return False
    except OSError:
        return True
    finally:
        s.close()


def test_restart_after_sigkill_cleans_what_the_dead_daemon_left(driver: str, tmp_path: Path):
    unlocked = tmp_path / "unlocked.sock"  # no lock file to tell that it is stale
    d = Daemon(driver, listen=[f"unix:{unlocked}:lockfile=0"])
    try:
        d.start()
        with d.connect() as client:
            client.send({"id": "doomed", "code": QUIET, "session_id": "kill-s",
                         "limits": {"wall_ms": 100_000}})
            read_until_output(client, "doomed")
            d.stop(signal.SIGKILL)  # twistd alone, as the OOM killer would
            while client.read_event() is not None:  # output already sent, then EOF
                pass
        left = leftovers(d)
        assert left["mounts"], "a killed daemon leaves its box mounts behind"
        # The box dies with the daemon, not at the next start (nor at its wall limit): bwrap
        # --die-with-parent; isolate gets SIGTERM from PR_SET_PDEATHSIG and kills the box.
        wait_for(lambda: not leftovers(d)["processes"], "the dead daemon's boxes to end", 10)
        assert os.path.exists(d.socket_path)  # and its socket, and the socket's lock
        assert os.path.lexists(f"{d.socket_path}.lock") and unlocked.exists()

        d.start()  # the same state directory, the same socket path
        wait_for(lambda: not _refused(d.socket_path), "the new daemon to listen")
        # A killed box's processes take a moment to exit (on a busy machine, seconds).
        wait_for(lambda: not leftovers(d, before=True)["processes"],
                 "the old boxes' processes to end", 15)
        after = leftovers(d, before=True)
        assert after["processes"] == [] and after["cgroups"] == [], after
        # Only the new daemon's own boxes are mounted, each once.
        assert len(after["mounts"]) == len(set(after["mounts"])), after["mounts"]
        events = d.run({"id": "alive", "code": HELLO, "session_id": "kill-s"})
        assert output(events, "alive") == "hello\n"
        with Client(str(unlocked)) as client:
            client.send({"id": "unlocked", "code": HELLO})
            assert output(client.read_until_done("unlocked"), "unlocked") == "hello\n"
        assert d.stop() in (0, -signal.SIGTERM)
        assert_clean(d)
    finally:
        d.cleanup()


# -- systemd units ---------------------------------------------------------------------------

def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (make test-tools installs systemd)")
    for unit in ("sandboxd.socket", "sandboxd.service"):
        text = (ROOT / "systemd" / unit).read_text()
        # The units name the documented install path; verify checks ExecStart exists.
        (tmp_path / unit).write_text(text.replace("/opt/sandboxd/bin/twistd", str(TWISTD)))
    # --man=no: Documentation= pages need man-db, which a minimal machine lacks.
    done = subprocess.run([analyze, "verify", "--man=no", "sandboxd.socket", "sandboxd.service"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done


def test_systemd_service_command_line_is_valid():
    from sandboxd.service.tap import Options

    service = (ROOT / "systemd" / "sandboxd.service").read_text()
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.split("=", 1)[1].split()
    assert argv[1:4] == ["-n", "--pidfile=", "--logger=sandboxd.journal.json_lines"]
    options = Options()
    options.parseOptions(argv[argv.index("sandboxd") + 1:])
    assert options["listen"] == ["systemd:domain=UNIX:index=0", "systemd:domain=INET:index=1"]
    socket_unit = (ROOT / "systemd" / "sandboxd.socket").read_text()
    listens = [line for line in socket_unit.splitlines() if line.startswith("ListenStream=")]
    assert listens[0].startswith("ListenStream=/") and ":" in listens[1]  # UNIX, then INET
    assert "SocketMode=0660" in socket_unit


# -- logs ------------------------------------------------------------------------------------

def test_json_logs_have_one_line_per_request():
    d = Daemon(first_driver())
    at = next(i for i, a in enumerate(d.argv) if a.startswith("--logfile="))
    d.argv[at] = "--logger=sandboxd.journal.json_lines"
    try:
        d.start()
        d.run({"id": "logged", "code": HELLO, "session_id": "log-s"})
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        out, _ = d.proc.communicate(timeout=HANG)
        d.proc = None
    finally:
        d.cleanup()
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert all({"time", "level", "namespace", "message"} <= r.keys() for r in records)
    line = next(r for r in records if r.get("id") == "logged")
    assert line["status"] == "ok" and line["session"] == "log-s"
    assert isinstance(line["box"], int) and line["bytes"] == len("hello\n")
    for phase in ("queue_ms", "build_ms", "run_ms"):
        assert phase in line
    assert isinstance(line["run_ms"], int)
    assert line["message"].startswith("request logged ")
