"""systemd/sandboxd.service and .socket, installed as the README says (a venv at /opt/sandboxd,
a plain ``pip install`` of the checkout, both units copied to /etc/systemd/system), started by
systemd in the cgroup-v2 guest of ``make test-cgroup2``.  The guest has no network: pip takes
the dependencies from the wheels the host prepared (``--no-index --find-links``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tarfile
from pathlib import Path

from tests.harness import HANG, ROOT

OPT = Path("/opt/sandboxd")
UNITS = Path("/etc/systemd/system")
SOCKET = "/run/sandboxd/sandboxd.sock"
# The README's sample.json, as the README writes it.
README = (ROOT / "README.md").read_text()
SAMPLE = re.search(r"printf '%s\\n' '(.+)' > sample.json", README).group(1)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert not check or done.returncode == 0, done
    return done


def show(unit: str, prop: str) -> str:
    return run("systemctl", "show", "-P", prop, unit).stdout.strip()


def ask(line: str) -> list[dict]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(HANG)
        s.connect(SOCKET)
        s.sendall(line.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(x) for x in data.decode().splitlines()]


def test_readme_install_started_by_systemd_serves_the_sample_and_stops_cleanly(tmp_path: Path):
    assert "sandboxd_plugin" in (ROOT / "setup.cfg").read_text()
    src = tmp_path / "sandboxd-checkout"
    with tarfile.open("/share/src.tar") as tar:
        tar.extractall(src)  # our own tar of the checkout (3.11.2: no filter=)
    shutil.rmtree(OPT, ignore_errors=True)
    try:
        run("python3", "-m", "venv", str(OPT))
        run(str(OPT / "bin" / "pip"), "install", "-q", "--no-index",
            f"--find-links={os.environ['WHEELS']}", str(src))
        plugin = list(OPT.glob("lib/python3*/site-packages/twisted/plugins/sandboxd_plugin.py"))
        assert plugin, "a plain pip install must carry twisted/plugins/sandboxd_plugin.py"
        for unit in ("sandboxd.service", "sandboxd.socket"):
            shutil.copy(ROOT / "systemd" / unit, UNITS / unit)
        run("systemctl", "daemon-reload")
        run("systemctl", "start", "sandboxd.socket")
        st = os.stat(SOCKET)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
        assert (st.st_uid, st.st_gid) == (0, 0)

        events = ask(SAMPLE)  # starts the service (socket activation)
        done = [e for e in events if e.get("done")]
        assert len(done) == 1 and done[0]["status"] == "ok", events
        assert "".join(e.get("output", "") for e in events if e.get("stream") == "stdout") == \
            "Hello 0\nHello 1\nHello 2\n"
        # Still the socket systemd made (the daemon chmods nothing: it could not, under
        # ProtectSystem=strict, and must not make it 0666).
        assert os.stat(SOCKET).st_ino == st.st_ino
        assert stat.S_IMODE(os.stat(SOCKET).st_mode) == 0o660
        assert show("sandboxd.service", "ActiveState") == "active"
        group = Path("/sys/fs/cgroup") / show("sandboxd.service", "ControlGroup").lstrip("/")
        inside = sorted(p.name for p in group.iterdir() if p.is_dir())
        assert inside[0] == "sandboxd-" + inside[0][9:] and inside[1:] == ["supervisor"], inside
        main_pid = show("sandboxd.service", "MainPID")
        assert main_pid in (group / "supervisor" / "cgroup.procs").read_text().split()

        run("systemctl", "stop", "sandboxd.service", "sandboxd.socket")
        assert show("sandboxd.service", "ActiveState") == "inactive"
        assert show("sandboxd.service", "Result") == "success"
        assert not group.exists() or not (group / "cgroup.procs").read_text().strip()
        journal = run("journalctl", "-u", "sandboxd.service", "-o", "cat", "--no-pager").stdout
        assert "Traceback" not in journal and "Usage: twistd" not in journal, journal
    finally:
        run("systemctl", "stop", "sandboxd.service", "sandboxd.socket", check=False)
        for unit in ("sandboxd.service", "sandboxd.socket"):
            (UNITS / unit).unlink(missing_ok=True)
        run("systemctl", "daemon-reload", check=False)
        run("systemctl", "reset-failed", check=False)
        shutil.rmtree(OPT, ignore_errors=True)

