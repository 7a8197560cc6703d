"""Driver command lines and end reports, without starting anything (no sandbox tool needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxd.boxes.box import Box
from sandboxd.limits import DEFAULT_LIMITS
from sandboxd.sandbox import seccomp
from sandboxd.sandbox.bubblewrap import STDERR_SHIM, BubblewrapDriver, read_options
from sandboxd.sandbox.cgroup import CgroupSupport, RunCgroup
from sandboxd.sandbox.driver import (
    ARGS_FD,
    HOLD_FD,
    INIT_FD,
    LAUNCHER_FAILED,
    SECCOMP_FD,
    Driver,
    Mount,
    SandboxRun,
)
from sandboxd.sandbox.drivers import DriverError
from sandboxd.sandbox.isolate import IsolateDriver, box_ids, parse_meta
from sandboxd.status import Phase

MIB = 1024 * 1024
NO_CGROUPS = CgroupSupport(None, {})
BUILD_ENV = {"PATH": "/go/bin:/usr/bin:/bin", "GOCACHE": "/gocache", "CGO_ENABLED": "0"}


@pytest.fixture(autouse=True)
def fake_tools(monkeypatch):
    monkeypatch.setattr(Driver, "tool", staticmethod(lambda name: f"/usr/bin/{name}"))


def make_box(tmp_path: Path, number: int = 3) -> Box:
    return Box(number, 60000 + number, 60000 + number, tmp_path / "boxes" / str(number))


def build_run(box: Box, tmp_path: Path, cgroup: RunCgroup | None = None) -> SandboxRun:
    return SandboxRun(
        phase=Phase.BUILD, box=box, argv=["/go/bin/go", "build", "-trimpath", "-o", "/out/main",
                                          "."],
        env=dict(BUILD_ENV), cwd="/src", limits=DEFAULT_LIMITS.build,
        mounts=[Mount(tmp_path / "goroot", "/go"), Mount(tmp_path / "std", "/gocache"),
                Mount(tmp_path / "src", "/src"), Mount(tmp_path / "out", "/out", writable=True)],
        with_workspace=False, cgroup=cgroup,
    )


def run_run(box: Box, binary: Path, cgroup: RunCgroup | None = None) -> SandboxRun:
    return SandboxRun(
        phase=Phase.RUN, box=box, argv=["/prog/main"], env={"HOME": "/box", "PATH": "/usr/bin"},
        cwd="/box", limits=DEFAULT_LIMITS.run, mounts=[Mount(binary, "/prog/main")],
        cgroup=cgroup,
    )


def bwrap_command(bwrap: BubblewrapDriver, run: SandboxRun) -> tuple[list[str], dict[str, str]]:
    """``bwrap.command(run)`` with the options bwrap reads from ARGS_FD put back in place,
    after checking that no host path is left on its command line (a box reads it)."""
    argv, env = bwrap.command(run)
    at = argv.index("--args")
    assert argv[at + 1] == str(ARGS_FD) and argv[at + 2] == "--"
    # nothing else after bwrap's own name but the stderr shim (fixed words, no host path)
    assert argv[at + 3:] == [*STDERR_SHIM, *run.argv]
    options = read_options(run.fds[ARGS_FD])
    os.close(run.fds.pop(ARGS_FD))
    return [*argv[:at], *options, *argv[at + 2:]], env


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    """The (a, b) arguments following each ``flag`` that takes two."""
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


# -- bubblewrap --------------------------------------------------------------------------


@pytest.fixture
def bwrap(tmp_path) -> BubblewrapDriver:
    return BubblewrapDriver(tmp_path / "state", NO_CGROUPS, first_uid=60000)


def split_bwrap(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """prlimit part, setpriv part, bwrap part."""
    p, s, b = argv.index("/usr/bin/prlimit"), argv.index("/usr/bin/setpriv"), argv.index(
        "/usr/bin/bwrap")
    return argv[p:s], argv[s:b], argv[b:]


def test_bwrap_run_command(bwrap, tmp_path):
    box = make_box(tmp_path)
    argv, env = bwrap_command(bwrap, run_run(box, tmp_path / "bin" / "main"))
    assert env == {"PATH": "/usr/bin:/bin"}  # the daemon's own environment stays out
    limits, identity, sandbox = split_bwrap(argv)
    lim = DEFAULT_LIMITS.run
    assert f"--nproc={lim.processes}" in limits and f"--nofile={lim.open_files}" in limits
    assert f"--fsize={lim.file_size_mb * MIB}" in limits and "--core=0" in limits
    assert f"--cpu={lim.cpu_ms // 1000 + 1}:{lim.cpu_ms // 1000 + 2}" in limits
    assert f"--as={(lim.memory_mb + 1024) * MIB}" in limits  # no cgroup: address space bound
    assert identity[1:] == ["--reuid=60003", "--regid=60003", "--clear-groups", "--no-new-privs",
                            "--pdeathsig=KILL", "--"]
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                 "--new-session", "--clearenv"):
        assert flag in sandbox, flag
    assert ("--json-status-fd", "3") in [(sandbox[i], sandbox[i + 1]) for i in
                                         range(len(sandbox) - 1)]
    binds = pairs(sandbox, "--bind")
    assert binds == [(str(box.workspace), "/box")]  # the box is the one writable bind
    ro = dict((inside, host) for host, inside in pairs(sandbox, "--ro-bind"))
    assert ro["/prog/main"] == str(tmp_path / "bin" / "main")
    assert ro.get("/usr") == "/usr"
    tmpfs_at = [sandbox[i + 1] for i, a in enumerate(sandbox) if a == "--tmpfs"]
    assert tmpfs_at == ["/tmp", "/dev/shm"]
    sizes = [sandbox[i + 1] for i, a in enumerate(sandbox) if a == "--size"]
    assert sizes == [str(lim.disk_mb * MIB)] * 2
    assert pairs(sandbox, "--chdir") and sandbox[sandbox.index("--chdir") + 1] == "/box"
    # The environment is cleared first, then exactly the run's variables are set.
    clear = sandbox.index("--clearenv")
    assert all(i > clear for i, a in enumerate(sandbox) if a == "--setenv")
    assert dict(pairs(sandbox, "--setenv")) == {"HOME": "/box", "PATH": "/usr/bin"}
    # The program gets its stderr at fd 6 back as fd 2 (fd 2 of bwrap is the tool's own).
    assert sandbox[-2 - len(STDERR_SHIM):] == ["--", *STDERR_SHIM, "/prog/main"]


def test_bwrap_build_has_no_workspace_and_only_out_writable(bwrap, tmp_path):
    box = make_box(tmp_path)
    argv, _ = bwrap_command(bwrap, build_run(box, tmp_path))
    _, _, sandbox = split_bwrap(argv)
    assert "/box" not in sandbox and str(box.workspace) not in sandbox
    assert pairs(sandbox, "--bind") == [(str(tmp_path / "out"), "/out")]
    ro = {inside for _, inside in pairs(sandbox, "--ro-bind")}
    assert {"/go", "/gocache", "/src"} <= ro
    assert sandbox[sandbox.index("--chdir") + 1] == "/src"
    assert dict(pairs(sandbox, "--setenv")) == BUILD_ENV
    assert sandbox[-7 - len(STDERR_SHIM):] == ["--", *STDERR_SHIM, "/go/bin/go", "build",
                                               "-trimpath", "-o", "/out/main", "."]


def test_bwrap_held_run_waits_on_its_pipe_and_only_then(bwrap, tmp_path):
    box = make_box(tmp_path)
    plain, _ = bwrap_command(bwrap, run_run(box, tmp_path / "main"))
    assert "--block-fd" not in plain
    held = run_run(box, tmp_path / "main")
    held.hold = True
    with pytest.raises(ValueError):
        bwrap.command(held)  # no pipe given: it would never start, or start at once
    held.fds[HOLD_FD] = 99
    argv, _ = bwrap_command(bwrap, held)
    _, _, sandbox = split_bwrap(argv)
    at = sandbox.index("--block-fd")
    assert sandbox[at + 1] == str(HOLD_FD) and sandbox.count("--block-fd") == 1
    assert at < sandbox.index("--")
    assert bwrap.can_hold and not IsolateDriver.can_hold


def test_bwrap_with_a_cgroup_joins_it_first_and_drops_the_address_space_limit(bwrap, tmp_path):
    cg = RunCgroup({"memory": tmp_path / "cg-mem", "pids": tmp_path / "cg-pids"}, 1)
    argv, _ = bwrap_command(bwrap, run_run(make_box(tmp_path), tmp_path / "main", cg))
    assert argv[:3] == ["/bin/sh", "-c", argv[2]] and "sandboxd-join" in argv
    joined = argv[argv.index("sandboxd-join") + 1: argv.index("--")]
    assert joined == [str(tmp_path / "cg-mem" / "cgroup.procs"),
                      str(tmp_path / "cg-pids" / "cgroup.procs")]
    assert argv.index("--") < argv.index("/usr/bin/prlimit")
    assert not any(a.startswith("--as=") for a in argv)


STARTED = b'{ "child-pid": 5, "pid-namespace": 4026532183 }\n'


@pytest.mark.parametrize(
    ("exit_code", "signal", "status", "expect"),
    [
        (0, None, STARTED + b'{ "exit-code": 0 }\n', {"exit_code": 0, "signal": None,
                                                       "failed": False}),
        (3, None, STARTED + b'{ "exit-code": 3 }\n', {"exit_code": 3, "signal": None,
                                                       "failed": False}),
        (137, None, STARTED + b'{ "exit-code": 137 }\n', {"exit_code": None, "signal": 9,
                                                           "failed": False}),
        # The program's own 125 is the program's, not a launcher failure.
        (LAUNCHER_FAILED, None, STARTED + b'{ "exit-code": 125 }\n',
         {"exit_code": LAUNCHER_FAILED, "failed": False}),
        (None, 9, b"", {"exit_code": None, "signal": 9, "failed": False}),
        (1, None, b"", {"failed": True}),  # bwrap never started the program
        (LAUNCHER_FAILED, None, b"", {"failed": True}),
        # bwrap's set-up failed after it forked ("Can't find source path …"): a child-pid but
        # no exit-code.  This was blamed on the program (compile_error, runtime_error).
        (1, None, STARTED, {"exit_code": 1, "failed": True}),
    ],
)
def test_bwrap_report(bwrap, tmp_path, exit_code, signal, status, expect):
    report = bwrap.report(run_run(make_box(tmp_path), tmp_path / "m"), exit_code, signal, status)
    for key, value in expect.items():
        assert getattr(report, key) == value, key
    if report.failed:
        assert report.message


# -- isolate -----------------------------------------------------------------------------


ISOLATE_CONFIG = {"first_uid": "60000", "first_gid": "60000", "num_boxes": "1000"}


@pytest.fixture
def iso(tmp_path, monkeypatch) -> IsolateDriver:
    config = tmp_path / "isolate.cf"
    config.write_text("")
    monkeypatch.setattr("sandboxd.sandbox.isolate.config_path", lambda: config)
    monkeypatch.setattr("sandboxd.sandbox.isolate.read_config",
                        lambda path=None: dict(ISOLATE_CONFIG))
    driver = IsolateDriver(tmp_path / "state", NO_CGROUPS)
    driver.use_tmpfs = False
    init = tmp_path / "init"
    init.write_bytes(b"\x7fELF init")
    driver.use_init(init)
    fresh = tmp_path / "fresh-tmp"
    fresh.mkdir()  # as _fresh_tmp makes it (the box's /etc goes in there)
    monkeypatch.setattr(driver, "_fresh_tmp", lambda box, disk_mb, tag="": fresh)
    return driver


def command_of(driver: IsolateDriver, run: SandboxRun) -> tuple[list[str], dict[str, str]]:
    """The command, and the filter and init it hands over checked and closed."""
    argv, env = driver.command(run)
    try:
        assert set(run.fds) == {SECCOMP_FD, INIT_FD}
        with open(f"/proc/self/fd/{run.fds[INIT_FD]}", "rb") as f:
            assert f.read() == b"\x7fELF init"
        with open(f"/proc/self/fd/{run.fds[SECCOMP_FD]}", "rb") as f:
            fake = driver.fake_flock and run.phase is Phase.BUILD
            assert f.read() == seccomp.program(fake_flock=fake)
    finally:
        run.close_fds()
    return argv, env


def test_isolate_run_command(iso, tmp_path):
    box = make_box(tmp_path)
    binary = tmp_path / "bin" / "main"
    binary.parent.mkdir()
    binary.write_bytes(b"\x7fELF")
    argv, env = command_of(iso, run_run(box, binary))
    assert env == {"PATH": "/usr/bin:/bin"}
    # isolate gets SIGTERM (it then kills the box) if the daemon dies; a cgroup namespace of
    # its own: /proc/self/cgroup names no cgroup of the host's.
    assert argv[:9] == ["/usr/bin/setpriv", "--pdeathsig=TERM", "--", "/usr/bin/unshare",
                        "--cgroup", "/usr/bin/setsid", "/usr/bin/isolate", "-b", "3"]
    # The box's init (sandboxd's seccomp filter) runs first, then becomes the program.
    assert "-s" in argv and "--inherit-fds" in argv
    assert argv[-4:] == ["--run", "--", f"/proc/self/fd/{INIT_FD}", "/prog/main"]
    lim = DEFAULT_LIMITS.run
    assert f"--processes={lim.processes}" in argv
    assert f"--time={lim.cpu_ms / 1000:.3f}" in argv
    assert f"--wall-time={lim.wall_ms / 1000 + 1:.3f}" in argv  # the daemon's timer is first
    assert f"--fsize={lim.file_size_mb * 1024}" in argv
    assert f"--open-files={lim.open_files}" in argv
    assert f"--mem={(lim.memory_mb + 1024) * 1024}" in argv
    assert "--chdir=/box" in argv
    assert not any(a.startswith("--syscalls") for a in argv)  # isolate 2.6 does not know it
    meta = [a for a in argv if a.startswith("--meta=")]
    assert meta == [f"--meta={tmp_path / 'state' / 'isolate-meta' / '3-run.meta'}"]
    dirs = [a.removeprefix("--dir=") for a in argv if a.startswith("--dir=")]
    assert f"/box={box.workspace}:rw" in dirs
    assert f"/tmp={tmp_path / 'fresh-tmp'}/tmp:rw" in dirs
    assert f"/dev/shm={tmp_path / 'fresh-tmp'}/shm:rw" in dirs
    # isolate mounts directories only: the binary gets a read-only directory of its own.
    holder = tmp_path / "state" / "isolate-prog" / "3"
    assert f"/prog={holder}" in dirs and (holder / "main").read_bytes() == b"\x7fELF"
    envs = [a.removeprefix("--env=") for a in argv if a.startswith("--env=")]
    assert envs == ["HOME=/box", "PATH=/usr/bin"]


def test_isolate_build_command(iso, tmp_path):
    box = make_box(tmp_path)
    assert iso.fake_flock  # isolate's default syscall_flags forbid file locks
    argv, _ = command_of(iso, build_run(box, tmp_path))
    # Released isolate has no --syscalls: the build's filter lets flock return 0 instead.
    assert not any(a.startswith("--syscalls") for a in argv)
    dirs = [a.removeprefix("--dir=") for a in argv if a.startswith("--dir=")]
    # Not isolate's own /box (under its box_root): an empty one on the run's tmpfs.
    assert [d for d in dirs if d.startswith("/box=")] == [f"/box={tmp_path / 'fresh-tmp'}/box:rw"]
    assert f"/go={tmp_path / 'goroot'}" in dirs and f"/gocache={tmp_path / 'std'}" in dirs
    assert f"/src={tmp_path / 'src'}" in dirs and f"/out={tmp_path / 'out'}:rw" in dirs
    assert "--chdir=/src" in argv and argv[-8:-5] == ["--", f"/proc/self/fd/{INIT_FD}",
                                                      "/go/bin/go"]
    assert "--env=CGO_ENABLED=0" in argv


def test_isolate_with_a_cgroup_has_no_address_space_limit(iso, tmp_path):
    cg = RunCgroup({"memory": tmp_path / "cg"}, 1)
    argv, _ = command_of(iso, run_run(make_box(tmp_path), tmp_path, cg))
    assert not any(a.startswith("--mem=") for a in argv)
    assert argv[0] == "/bin/sh" and argv.index("/usr/bin/isolate") > argv.index("--")


def test_isolate_own_cgroups_passes_cg_and_no_address_space_limit(iso, tmp_path):
    iso.own_cgroups = True  # --cgroups=isolate: cgroup v2 hosts with isolate's cg_root
    argv, _ = command_of(iso, run_run(make_box(tmp_path), tmp_path))
    lim = DEFAULT_LIMITS.run
    assert "--cg" in argv and f"--cg-mem={lim.memory_mb * 1024}" in argv
    assert not any(a.startswith("--mem=") for a in argv)
    assert argv[0] == "/usr/bin/setpriv"  # no daemon cgroup to join first
    assert any(line.startswith("memory: isolate --cg") for line in iso.describe())


def test_isolate_own_cgroups_reports_cgroup_memory_and_oom(iso, tmp_path):
    iso.own_cgroups = True
    run = run_run(make_box(tmp_path), tmp_path / "main")
    write_meta(iso, run, "time:0.400\ntime-wall:0.410\nmax-rss:300000\ncg-mem:262144\n"
                         "cg-oom-killed:1\nexitsig:9\nstatus:SG\nmessage:Caught fatal signal 9\n")
    report = iso.report(run, 1, None, b"")
    assert report.memory_exceeded and report.memory_kb == 262144 and report.signal == 9


# The meta files of /work/isolate-lab/FINDINGS.md, exactly as isolate wrote them.
META = {
    "normal": "time:0.002\ntime-wall:0.002\nmax-rss:2224\ncsw-voluntary:15\ncsw-forced:4\n"
              "exitcode:0\n",
    "exit3": "time:0.002\ntime-wall:0.002\nmax-rss:2352\ncsw-voluntary:14\ncsw-forced:6\n"
             "exitcode:3\nstatus:RE\nmessage:Exited with error status 3\n",
    "panic": "time:0.002\ntime-wall:0.004\nmax-rss:2224\ncsw-voluntary:16\ncsw-forced:3\n"
             "exitcode:2\nstatus:RE\nmessage:Exited with error status 2\n",
    "sigkill": "time:0.002\ntime-wall:0.002\nmax-rss:2224\ncsw-voluntary:12\ncsw-forced:7\n"
               "exitsig:9\nstatus:SG\nmessage:Caught fatal signal 9\n",
    "wall": "status:TO\nmessage:Time limit exceeded (wall clock)\nkilled:1\ntime:0.002\n"
            "time-wall:5.100\nmax-rss:2224\ncsw-voluntary:14\ncsw-forced:4\n",
    "cpu": "status:TO\nmessage:Time limit exceeded\nkilled:1\ntime:2.109\ntime-wall:2.100\n"
           "max-rss:2224\ncsw-voluntary:381\ncsw-forced:30\n",
    "oom": "time:0.841\ntime-wall:0.840\nmax-rss:380208\ncsw-voluntary:239\ncsw-forced:29\n"
           "exitcode:2\nstatus:RE\nmessage:Exited with error status 2\n",
    "fsize": "time:0.004\ntime-wall:0.004\nmax-rss:1524\ncsw-voluntary:4\ncsw-forced:3\n"
             "exitsig:25\nstatus:SG\nmessage:Caught fatal signal 25\n",
    "noexec": "time:0.001\ntime-wall:0.001\nmax-rss:1728\ncsw-voluntary:4\ncsw-forced:2\n"
              "exitcode:127\nstatus:RE\nmessage:Exited with error status 127\n",
    "sigterm": "exitsig:15\nstatus:SG\nmessage:Interrupted\nkilled:1\ntime:0.003\n"
               "time-wall:1.007\nmax-rss:2352\ncsw-voluntary:41\ncsw-forced:9\n",
    "xx": "status:XX\nmessage:open(\"/nope\"): No such file or directory\n",
    # Over the CPU limit only by isolate's count after the end (compile/link children): the
    # program was not killed, and isolate writes no exitcode then.
    "posthoc": "time:0.274\ntime-wall:0.190\nmax-rss:20092\ncsw-voluntary:764\n"
               "csw-forced:340\nstatus:TO\nmessage:Time limit exceeded\n",
    "cg": "time:0.010\ntime-wall:0.020\nmax-rss:2224\ncg-mem:5000\ncg-oom-killed:1\n"
          "exitsig:9\nstatus:SG\nmessage:Caught fatal signal 9\n",
}

# case: (isolate rc, exit_code, signal, cpu_ms, wall_ms, memory_kb, timed_out, failed)
EXPECT = {
    "normal": (0, 0, None, 2, 2, 2224, None, False),
    "exit3": (1, 3, None, 2, 2, 2352, None, False),
    "panic": (1, 2, None, 2, 4, 2224, None, False),
    "sigkill": (1, None, 9, 2, 2, 2224, None, False),
    "wall": (1, None, None, 2, 5100, 2224, "wall", False),
    "cpu": (1, None, None, 2109, 2100, 2224, "cpu", False),
    "oom": (1, 2, None, 841, 840, 380208, None, False),
    "fsize": (1, None, 25, 4, 4, 1524, None, False),
    "noexec": (1, 127, None, 1, 1, 1728, None, False),
    "sigterm": (1, None, 15, 3, 1007, 2352, None, False),
    "xx": (2, None, None, None, None, None, None, True),
    "cg": (1, None, 9, 10, 20, 5000, None, False),
}


def test_parse_meta():
    meta = parse_meta(META["xx"] + "garbage line\n")
    assert meta == {"status": "XX", "message": 'open("/nope"): No such file or directory'}


def write_meta(iso: IsolateDriver, run: SandboxRun, text: str) -> None:
    iso._meta(run).write_text(text)


@pytest.mark.parametrize("case", sorted(EXPECT))
def test_isolate_report_for_each_meta_case(iso, tmp_path, case):
    rc, code, sig, cpu, wall, mem, timed_out, failed = EXPECT[case]
    run = run_run(make_box(tmp_path), tmp_path / "main")
    write_meta(iso, run, META[case])
    report = iso.report(run, rc, None, b"sandboxd-init: ready\n")  # the init became the program
    assert (report.exit_code, report.signal, report.cpu_ms, report.wall_ms, report.memory_kb,
            report.timed_out, report.failed) == (code, sig, cpu, wall, mem, timed_out, failed)
    assert report.memory_exceeded is (case == "cg")
    if failed:  # isolate's words name host paths: the log's, never the client's
        assert "No such file" in report.detail and "/nope" not in report.message
    assert not iso._meta(run).exists()  # read once, then removed


def test_isolate_report_with_a_cgroup_does_not_take_max_rss(iso, tmp_path):
    cg = RunCgroup({"memory": tmp_path / "cg"}, 1)
    run = run_run(make_box(tmp_path), tmp_path / "main", cg)
    write_meta(iso, run, META["normal"])
    assert iso.report(run, 0, None, b"").memory_kb is None  # the cgroup's peak is used instead


def test_isolate_killed_itself_leaves_an_empty_meta(iso, tmp_path):
    run = run_run(make_box(tmp_path), tmp_path / "main")
    write_meta(iso, run, "")
    report = iso.report(run, None, 9, b"")
    assert report.signal == 9 and report.exit_code is None and not report.failed
    assert iso.report(run, None, None, b"").signal == 9  # no meta file at all


def test_isolate_launcher_failure(iso, tmp_path):
    report = iso.report(run_run(make_box(tmp_path), tmp_path / "m"), LAUNCHER_FAILED, None, b"")
    assert report.failed and "cgroup" in report.message


def test_isolate_late_cpu_count_of_a_build_is_not_a_timeout(iso, tmp_path):
    run = build_run(make_box(tmp_path), tmp_path)
    write_meta(iso, run, META["posthoc"])
    report = iso.report(run, 1, None, b"")
    # The build ran to its end; whether it worked is for its output to say.
    assert report.timed_out is None and report.exit_code == 0 and not report.failed


def test_isolate_late_cpu_count_of_a_program_is_a_cpu_timeout(iso, tmp_path):
    run = run_run(make_box(tmp_path), tmp_path / "main")
    write_meta(iso, run, META["posthoc"])
    report = iso.report(run, 1, None, b"")
    assert report.timed_out == "cpu" and report.exit_code is None


def test_isolate_report_when_the_box_init_failed(iso, tmp_path):
    run = run_run(make_box(tmp_path), tmp_path / "main")
    write_meta(iso, run, META["noexec"])
    report = iso.report(run, 1, None, b"sandboxd-init: seccomp: invalid argument\n")
    assert report.failed and report.message == "sandboxd-init: seccomp: invalid argument"
    write_meta(iso, run, META["noexec"])  # isolate could not even start the init
    assert iso.report(run, 1, None, b"").failed
    # The program itself exiting 127 after the init started it is the program's.
    write_meta(iso, run, META["noexec"])
    report = iso.report(run, 1, None, b"sandboxd-init: ready\n")
    assert not report.failed and report.exit_code == 127


def test_isolate_without_its_init_refuses_to_run(iso, tmp_path):
    iso.init_binary = None
    run = run_run(make_box(tmp_path), tmp_path / "main")
    with pytest.raises(DriverError, match="init"):
        iso.command(run)
    assert not run.fds


def test_isolate_file_locks_allowed_by_its_config_are_not_faked(tmp_path, monkeypatch):
    config = tmp_path / "isolate.cf"
    config.write_text("")
    monkeypatch.setattr("sandboxd.sandbox.isolate.config_path", lambda: config)
    monkeypatch.setattr("sandboxd.sandbox.isolate.read_config",
                        lambda path=None: {**ISOLATE_CONFIG, "syscall_flags": "27"})
    assert not IsolateDriver(tmp_path / "state", NO_CGROUPS).fake_flock


def test_isolate_box_ids_from_its_config(tmp_path):
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("someone:100000:65536\nisolate:300000:65536\nisolate:1:2\n")
    subgid.write_text("isolate:400000:1000\n")
    # isolate's stock config: the subid_user's ranges; as many boxes as both ranges allow.
    stock = {"box_root": "/var/local/lib/isolate", "subid_user": "isolate"}
    assert box_ids(stock, subuid, subgid) == (300000, 400000, 1000)
    assert box_ids({**stock, "num_boxes": "100"}, subuid, subgid) == (300000, 400000, 100)
    with pytest.raises(DriverError, match="only 1000"):
        box_ids({**stock, "num_boxes": "5000"}, subuid, subgid)
    with pytest.raises(DriverError, match="no range"):
        box_ids({"subid_user": "nobody"}, subuid, subgid)
    with pytest.raises(DriverError, match="both"):
        box_ids({**stock, "first_uid": "60000"}, subuid, subgid)
    assert box_ids(ISOLATE_CONFIG) == (60000, 60000, 1000)
    with pytest.raises(DriverError, match="neither"):
        box_ids({"box_root": "/x"})


def test_isolate_refuses_box_numbers_it_does_not_have(iso):
    iso.check_box_range(0, 998)  # 999 is the warm box
    with pytest.raises(DriverError, match="num_boxes"):
        iso.check_box_range(900, 100)
