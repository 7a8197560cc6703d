"""A bad day, as an operator meets it: a daemon that cannot serve, two daemons on one state
directory, every way of stopping, the sandbox failing under a request. Real twistd processes,
real boxes, real Go programs; each test also checks that nothing is left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import HANG, TWISTD, Daemon, finals, go_main, output
from tests.system.test_listeners import free_port

TICKS = go_main('\tfor i := 0; ; i++ {\n\t\tfmt.Println("tick", i)\n'
                '\t\ttime.Sleep(100 * time.Millisecond)\n\t}', imports=("fmt", "time"))
HELLO = go_main('\tfmt.Println("hello")')


def base_name(state_dir: Path) -> str:
    from sandboxd.service.assemble import instance_name

    return f"sandboxd-{instance_name(state_dir)}"


def left_behind(state_dir: Path, daemon_pid: int | None = None) -> dict[str, list[str]]:
    """Everything of the daemon of ``state_dir`` still there: mounts under it, its cgroups
    (the base ``sandboxd-<hash>`` ones included), processes naming it, zombies of the daemon."""
    state = str(state_dir)
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(state)]
    name = base_name(state_dir)
    cgroups = sorted({str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{name}")}
                     | {str(p) for p in Path("/sys/fs/cgroup").glob(f"*/*/*/{name}")}
                     | {str(p) for p in Path("/sys/fs/cgroup").glob(f"{name}")})
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if state in cmdline or (daemon_pid is not None and ppid == daemon_pid):
            procs.append(f"{pid} {cmdline[:120]}")
    return {"mounts": mounts, "cgroups": cgroups, "processes": procs}


def registered(state_dir: Path) -> bool:
    import hashlib

    name = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return (Path("/run/sandboxd/ranges") / name).exists()


NOTHING = {"mounts": [], "cgroups": [], "processes": []}


def wait_nothing_left(state_dir: Path) -> dict[str, list[str]]:
    deadline = time.monotonic() + 15  # a killed box's processes take a moment to go
    while (left := left_behind(state_dir)) != NOTHING and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def started_log(d: Daemon, since: int = 0) -> str:
    """The daemon's log from offset ``since``, once it has started (its socket exists a
    moment before it logs that it listens)."""
    deadline = time.monotonic() + HANG
    while "listening on" not in (log := d.log()[since:]):
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    return log


def read_until_output(client, request_id: str) -> None:
    while True:
        event = client.read_event()
        assert event is not None, "connection closed early"
        if event["id"] == request_id and not event.get("done"):
            return


def twistd(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(TWISTD), "-n", "--pidfile=", "--logfile=-", "sandboxd", *args],
                          capture_output=True, text=True, timeout=HANG, stdin=subprocess.DEVNULL,
                          **kw)


def with_arg(d: Daemon, name: str, value: str) -> list[str]:
    """The daemon's argv with ``--name`` set to ``value`` (replacing the harness's)."""
    argv = [a for a in d.argv if not a.startswith(f"--{name}=")]
    argv.insert(argv.index("sandboxd") + 1, f"--{name}={value}")
    return argv


# -- one daemon per state directory ----------------------------------------------------------

def test_a_second_daemon_on_the_same_state_dir_is_refused_and_harms_nothing():
    first = Daemon("bubblewrap")
    try:
        first.start()
        with first.connect() as client:
            client.send({"id": "running", "code": TICKS, "session_id": "s"})
            read_until_output(client, "running")
            # The same state directory, its own socket and box range: refused at once, by
            # the lock, before it swept anything (it used to remove the first one's cgroups,
            # killing its program, and wipe its prepared builds).
            second = Daemon("bubblewrap")
            try:
                argv = with_arg(second, "state-dir", str(first.state_dir))
                done = subprocess.run(argv, capture_output=True, text=True, timeout=HANG)
            finally:
                second.cleanup()
            assert done.returncode == 1, done
            assert done.stderr == (
                f"sandboxd: another sandboxd (pid {first.proc.pid}) is running on --state-dir "
                f"{first.state_dir}; stop it first, or give this one its own --state-dir\n")
            assert "Traceback" not in done.stdout
            # The first one's program runs on: more ticks come, no final event.
            seen = len(client.events)
            while len(client.events) < seen + 3:
                event = client.read_event()
                assert event is not None and not event.get("done"), event
            client.send({"type": "cancel", "id": "running"})
            events = client.read_until_done("running")
            assert finals(events)["running"]["status"] == "cancelled"
        assert "a previous daemon left" not in first.log()
        assert first.stop() in (0, -signal.SIGTERM)
        assert wait_nothing_left(first.state_dir) == NOTHING
    finally:
        first.cleanup()


def test_an_overlapping_box_range_is_refused_naming_the_holder():
    first = Daemon("bubblewrap")
    other = Daemon("bubblewrap")
    try:
        first.start()
        argv = with_arg(other, "first-box", str(first.first_box + 4))
        argv = [a for a in argv if not a.startswith("--first-uid=")]
        argv.insert(argv.index("sandboxd") + 1, f"--first-uid={100000 + first.first_box}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=HANG)
        assert done.returncode == 1, done
        # harness: --boxes=2 --max-sessions=4, so a range is 3 x 2 + 4 + 2 box numbers and
        # the start-up check's; box N runs as uid first-uid + N.
        b, u = first.first_box, 100000 + 2 * first.first_box
        mine_b, mine_u = first.first_box + 4, 100000 + 2 * first.first_box + 4
        assert done.stderr == (
            f"sandboxd: another sandboxd (pid {first.proc.pid}, --state-dir "
            f"{first.state_dir.resolve()}) uses boxes {b}-{b + 12}, uids {u}-{u + 12}; this "
            f"one would use boxes {mine_b}-{mine_b + 12}, uids {mine_u}-{mine_u + 12}: "
            "give it a --first-box (and, for bubblewrap, --first-uid) range of its own\n")
        assert left_behind(other.state_dir) == NOTHING
        assert first.run({"id": "alive", "code": HELLO})[-1]["status"] == "ok"
    finally:
        first.cleanup()
        other.cleanup()


# -- every stop is clean ---------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT],
                         ids=["SIGHUP", "SIGTERM", "SIGINT"])
def test_every_stop_is_graceful_and_leaves_nothing(sig: int):
    d = Daemon("bubblewrap", "--shutdown-grace=0.5")
    try:
        d.start()
        assert left_behind(d.state_dir)["cgroups"], "a running daemon has its base cgroups"
        assert registered(d.state_dir)
        with d.connect() as client:
            client.send({"id": "running", "code": TICKS, "session_id": "s"})
            read_until_output(client, "running")
            d.proc.send_signal(sig)
            events = client.read_all()
        done = finals(events)["running"]
        assert done["status"] == "cancelled" and "shutting down" in done["message"]
        code = d.proc.wait(timeout=HANG)
        assert code in (0, 1, -sig), code  # twistd ends by SIGTERM/SIGINT; SIGHUP: 0
        assert "sandboxd stopped; every box removed" in d.log()
        assert wait_nothing_left(d.state_dir) == NOTHING
        assert not registered(d.state_dir), "its box-range registration outlived it"
    finally:
        d.cleanup()


def test_after_sigkill_the_next_start_sweeps_and_its_stop_leaves_nothing():
    d = Daemon("bubblewrap")
    try:
        d.start()
        with d.connect() as client:
            client.send({"id": "doomed", "code": TICKS, "session_id": "s"})
            read_until_output(client, "doomed")
            d.stop(signal.SIGKILL)
        assert left_behind(d.state_dir)["mounts"], "a killed daemon leaves its mounts"
        since = len(d.log())
        d.start()
        assert "removed 3 cgroups a previous daemon left" in started_log(d, since)
        assert d.run({"id": "alive", "code": HELLO})[-1]["status"] == "ok"
        d.stop()
        assert wait_nothing_left(d.state_dir) == NOTHING
    finally:
        d.cleanup()


# -- start-up proves it can serve ------------------------------------------------------------

def test_start_up_builds_and_runs_a_program_in_a_box_before_listening():
    d = Daemon("bubblewrap")
    try:
        d.start()
        log = started_log(d)
        checked = log.index("start-up check: box ")
        assert "built a program in" in log and "ran it in" in log
        assert checked < log.index("listening on")
    finally:
        d.cleanup()


def test_a_state_dir_the_box_uids_cannot_reach_stops_the_start(tmp_path: Path):
    d = Daemon("bubblewrap")
    private = d.dir / "private"
    private.mkdir(mode=0o700)
    state = private / "state"
    try:
        argv = with_arg(d, "state-dir", str(state))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=HANG)
        # The start-up check's box is the range's last: first-box + 3 x boxes + max-sessions
        # + 2.
        uid = 100000 + d.first_box + d.first_box + 3 * 2 + 4 + 2
        assert done.returncode == 1, done
        assert done.stderr == (
            f"sandboxd: cannot serve: box uid {uid} cannot reach {state}: {private} is mode "
            "0700 (owner root). Every directory above --state-dir and --cache-dir must be "
            f"searchable by others: chmod o+x {private}, or use a --state-dir elsewhere (the "
            "default is /var/lib/sandboxd).\n")
        assert not d.socket_path or not os.path.exists(d.socket_path)  # it never listened
        assert left_behind(state) == NOTHING
    finally:
        d.cleanup()


def test_a_state_dir_mounted_noexec_stops_the_start():
    d = Daemon("bubblewrap")
    noexec = d.dir / "noexec"
    noexec.mkdir(mode=0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,mode=755", "tmpfs", str(noexec)],
                   check=True)
    try:
        done = subprocess.run(with_arg(d, "state-dir", str(noexec / "state")),
                              capture_output=True, text=True, timeout=HANG)
        assert done.returncode == 1, done
        assert done.stderr.startswith("sandboxd: cannot serve: a box could not execute its "
                                      "program (")
        assert done.stderr.endswith(": are --state-dir or --cache-dir on a file system mounted "
                                    "noexec? Give directories where programs may run.\n")
        assert done.stderr.count("\n") == 1 and not os.path.exists(d.socket_path)
        assert left_behind(noexec / "state") == NOTHING
    finally:
        subprocess.run(["umount", "-l", str(noexec)], capture_output=True)
        d.cleanup()


# -- a sandbox that fails is the server's fault ----------------------------------------------

def test_a_sandbox_failure_is_internal_error_naming_no_host_path():
    """The state dir becomes unreachable for the box uids after the start (as when another
    daemon removed its boxes, or a parent's mode changed): bwrap fails in its set-up. That was
    compile_error with bwrap's "Can't find source path /tmp/…" sent to the client, and
    runtime_error for a cached program."""
    d = Daemon("bubblewrap")
    try:
        d.start()
        assert d.run({"id": "cached", "code": HELLO})[-1]["status"] == "ok"
        os.chmod(d.dir, 0o700)
        try:
            events = d.run({"id": "build", "code": go_main('\tfmt.Println("new")')},
                           {"id": "run", "code": HELLO})
        finally:
            os.chmod(d.dir, 0o755)
        done = finals(events)
        for request in ("build", "run"):
            assert done[request]["status"] == "internal_error", done[request]
            assert done[request]["message"] == (
                "internal error: sandbox failure (the sandbox could not start the program); "
                "this is the server's fault, not the program's: the server's log has the "
                "details")
        assert output(events) == ""  # nothing of what bwrap said reached the client
        assert str(d.dir) not in str(events)
        log = d.log()
        assert "sandbox failure in box" in log and "bwrap: Can't find source path" in log
        assert d.run({"id": "again", "code": HELLO})[-1]["status"] == "ok"
    finally:
        d.cleanup()


# -- every operator mistake is one clear line ------------------------------------------------

def _mistakes() -> list[tuple[str, list[str], str]]:
    cases = [
        ("boxes-not-a-number", ["--boxes", "abc"],
         "twistd sandboxd: --boxes 'abc' is not a whole number (see twistd sandboxd --help)"),
        ("unknown-option", ["--nope"],
         "twistd sandboxd: option --nope not recognized (see twistd sandboxd --help)"),
        ("listen-not-a-port", ["--listen", "tcp:notaport"],
         "sandboxd: cannot listen on tcp:notaport: 'notaport' is not a number"),
        ("state-dir-is-a-file", ["--state-dir", "/etc/hostname"],
         "sandboxd: --state-dir /etc/hostname is not a directory"),
        ("cache-dir-is-a-file", ["--cache-dir", "/etc/hostname"],
         "sandboxd: --cache-dir /etc/hostname is not a directory"),
        ("state-dir-under-proc", ["--state-dir", "/proc/sandboxd"],
         "sandboxd: --state-dir /proc/sandboxd is under /proc: give a directory on a real "
         "file system"),
        ("go-nowhere", ["--go", "/nowhere"],
         "sandboxd: --go /nowhere: not a Go installation (no bin/go or src/)"),
    ]
    if shutil.which("isolate") is None:
        cases.append(("isolate-missing", ["--sandbox", "isolate"],
                      "sandboxd: isolate is not installed (see README: make setup)"))
    if shutil.which("tor") is None:
        cases.append(("onion-without-tor", ["--listen", "onion:80"],
                      "sandboxd: --listen onion:80 launches tor, which is not installed: "
                      "apt-get install tor, or give controlPort= of a running tor"))
    return cases


@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in _mistakes()],
                         ids=[c[0] for c in _mistakes()])
def test_an_operator_mistake_is_one_line_and_exit_1(tmp_path: Path, args: list[str],
                                                    expected: str):
    state = tmp_path / "state"
    argv = [f"--state-dir={state}", f"--listen=unix:{tmp_path}/sock", *args]
    done = twistd(*argv)
    assert (done.returncode, done.stderr, done.stdout) == (1, expected + "\n", "")
    assert left_behind(state) == NOTHING


def test_a_port_in_use_is_one_line_and_leaves_nothing(tmp_path: Path):
    import socket

    port = free_port()
    d = Daemon("bubblewrap", listen=[f"tcp:{port}:interface=127.0.0.1"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        try:
            done = subprocess.run(d.argv, capture_output=True, text=True, timeout=HANG)
            assert done.returncode == 1, done
            assert done.stderr == (
                f"sandboxd: cannot listen on tcp:{port}:interface=127.0.0.1: address already "
                "in use (is another sandboxd, or another program, listening there?)\n")
            assert left_behind(d.state_dir) == NOTHING
        finally:
            d.cleanup()


def test_not_root_is_one_line(tmp_path: Path):
    # The checkout must be readable by an unprivileged uid for this (it is in CI's /work).
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(TWISTD), "-n",
         "--pidfile=", "--logfile=-", "sandboxd", f"--state-dir={tmp_path}/state"],
        capture_output=True, text=True, timeout=HANG, cwd="/")
    assert (done.returncode, done.stderr) == (1, (
        "sandboxd: must run as root (it mounts each box's file system, makes cgroups and runs "
        "boxes as their own uids); the privileges it keeps are in docs/operations.md\n"))
