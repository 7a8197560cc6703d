"""The start-up check: before it listens, the daemon proves it can serve.

A daemon that cannot build or run a program in a box would accept work and fail every request.
So before any listener opens, it does what a request does, for real: a box of its own range is
made, a tiny Go program is built in it (the toolchain, the standard-library cache, a fresh build
directory, the build's cgroup and limits) and run in it (the box's tmpfs, the run's cgroup and
limits), through the same driver command lines.  Anything wrong ends the start with one
paragraph naming the cause and what to do.

Before that, one cause is looked for explicitly, because bwrap names it badly ("Can't find
source path …: Permission denied"): every directory above the state and cache directories must
be searchable by the box uids (a state dir under a 0700 ``mktemp -d`` or a home directory).
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sandboxd.boxes import hostfs
from sandboxd.boxes.box import Box
from sandboxd.golang.toolchain import BINARY_INSIDE, SOURCE_INSIDE, Toolchain
from sandboxd.jobs.heldbuild import build_mounts, make_job_dir
from sandboxd.limits import PhaseLimits
from sandboxd.sandbox import boxprocs, cgroup
from sandboxd.sandbox.driver import (
    RUN_ENV,
    STATUS_FD,
    Driver,
    Mount,
    Report,
    SandboxRun,
)
from sandboxd.service.instance import StartError
from sandboxd.status import Phase

SOURCE = b'package main\n\nimport "os"\n\nfunc main() { os.Stdout.WriteString("sandboxd ok\\n") }\n'
EXPECTED = b"sandboxd ok\n"
HANG_S = 120  # only a hang bound: the check takes well under a second


def unreachable(path: Path, uid: int, gid: int) -> str | None:
    """Why ``uid`` (group ``gid``, no other groups) cannot reach ``path``, or None."""
    path = path.resolve()
    for directory in [*reversed(path.parents), path]:
        try:
            st = os.stat(directory)
        except OSError:
            return None  # not made yet; the daemon makes it, with its own modes
        if not stat.S_ISDIR(st.st_mode):
            return None
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return (f"box uid {uid} cannot reach {path}: {directory} is mode "
                    f"{stat.S_IMODE(st.st_mode):04o} (owner {_user(st.st_uid)}). Every "
                    f"directory above --state-dir and --cache-dir must be searchable by "
                    f"others: chmod o+x {directory}, or use a --state-dir elsewhere "
                    "(the default is /var/lib/sandboxd)")
    return None


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check(daemon: Any, number: int) -> str:
    """Build and run a program in box ``number``; a line for the log, or StartError."""
    driver: Driver = daemon.driver
    uid = driver.uid_for(number)
    tc: Toolchain = daemon.toolchain
    for path in (driver.state_dir, tc.goroot, tc.std_cache):
        why = unreachable(path, uid, uid)
        if why is not None:
            raise StartError(f"cannot serve: {why}.")
    box = Box(number, uid, uid, driver.workspace_for(number))
    job_dir = daemon.runtime.jobs_dir / "start-check"
    prog = daemon.runtime.jobs_dir / "start-check.prog"
    defaults = daemon.policy.defaults
    began = time.monotonic()
    try:
        try:
            driver.create_box(box, defaults.run.disk_mb)
            make_job_dir(job_dir, defaults.build.disk_mb)
        except OSError as e:
            raise StartError(f"cannot serve: cannot make a box ({e.strerror or e}).") from None
        _build(daemon, box, tc, job_dir)
        built = time.monotonic()
        _install(job_dir / "out", prog)
        run = SandboxRun(phase=Phase.RUN, box=box, argv=[BINARY_INSIDE], env=dict(RUN_ENV),
                         cwd="/box", limits=defaults.run,
                         mounts=[Mount(prog, os.path.dirname(BINARY_INSIDE))],
                         with_workspace=True)
        output = _run(daemon, run, "run")
        if output != EXPECTED:
            raise StartError(f"cannot serve: the start-up program printed {output[:200]!r}, "
                             f"not {EXPECTED!r}.")
        ended = time.monotonic()
        return (f"start-up check: box {number} (uid {uid}) built a program in "
                f"{(built - began) * 1000:.0f} ms and ran it in {(ended - built) * 1000:.0f} ms")
    finally:
        _clean_up(driver, box, job_dir, prog)


def _build(daemon: Any, box: Box, tc: Toolchain, job_dir: Path) -> None:
    """The start-up program built in the box, into ``job_dir/out``."""
    src, out = job_dir / "src", job_dir / "out"
    hostfs.make_private_dir(src, 0, 0, 0o755)
    hostfs.write_tree(src, {"main.go": SOURCE, "go.mod": tc.go_mod()})
    hostfs.make_private_dir(out, box.uid, box.gid, 0o700)
    build = SandboxRun(phase=Phase.BUILD, box=box, argv=tc.build_argv(),
                       env=tc.build_env(), cwd=SOURCE_INSIDE, limits=daemon.policy.defaults.build,
                       mounts=build_mounts(tc, job_dir), with_workspace=False)
    _run(daemon, build, "build")


def _install(out: Path, prog: Path) -> None:
    """The built program copied (without following anything the box made) to ``prog/main``."""
    hostfs.make_private_dir(prog, 0, 0, 0o755)
    try:
        fd, size = hostfs.open_box_file(out, "main", 256 * 1024 * 1024)
    except OSError as e:
        raise StartError(f"cannot serve: the start-up build left no program ({e}).") from None
    try:
        target = os.open(prog / "main", os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | hostfs.O_SAFE, 0o555)
        try:
            hostfs.copy_fd(fd, target, size)
        finally:
            os.close(target)
    finally:
        os.close(fd)


def _clean_up(driver: Driver, box: Box, job_dir: Path, prog: Path) -> None:
    for path in (job_dir, prog):
        try:
            hostfs.remove_scratch_dir(path) if path == job_dir else hostfs.remove_tree(path)
        except OSError:
            pass
    try:
        driver.destroy_box(box)
    except Exception:
        pass
    _kill_uid(box.uid)


def _run(daemon: Any, run: SandboxRun, what: str) -> bytes:
    """Run one phase to its end the way a request's would; its stdout, or StartError."""
    driver: Driver = daemon.driver
    cgroups = daemon.cgroups
    limits: PhaseLimits = run.limits
    if cgroups.version is not None and not driver.own_cgroups:
        try:
            run.cgroup = cgroups.create(cgroup.run_name("start-check", what), limits)
        except OSError as e:
            raise StartError(f"cannot serve: cannot make a cgroup under "
                             f"{cgroups.describe()} ({e.strerror or e}). Try --cgroups=off "
                             "(rlimits only) if this host's cgroups cannot be used.") from None
    try:
        report, text = _spawn(driver, run, what)
    finally:
        if run.cgroup is not None:
            run.cgroup.remove()
        driver.finish(run)
    _judge(driver.name, report, (text["tool"] or text["err"]).decode("utf-8", "replace").strip(),
           what)
    return text["out"]


def _spawn(driver: Driver, run: SandboxRun, what: str) -> tuple[Report, dict[str, bytes]]:
    """The phase's process, run to its end: the driver's report and what it wrote (stdout,
    stderr, the sandbox tool's own words, its status)."""
    files = {name: tempfile.TemporaryFile() for name in ("out", "err", "tool", "status")}
    try:
        driver.prepare(run)
        argv, env = driver.command(run)
        fds = {STATUS_FD: files["status"].fileno(), **run.fds}
        if driver.stderr_fd != 2:
            fds[driver.stderr_fd] = files["err"].fileno()

        def place_fds() -> None:
            for child_fd, fd in fds.items():
                os.dup2(fd, child_fd)

        try:
            proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                                  stdout=files["out"], stderr=files["tool"] if
                                  driver.stderr_fd != 2 else files["err"], timeout=HANG_S,
                                  pass_fds=tuple(fds), preexec_fn=place_fds)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            raise StartError(f"cannot serve: the start-up {what} did not end within "
                             f"{HANG_S} s.") from None
        finally:
            run.close_fds()
        text = {}
        for name, f in files.items():
            f.seek(0)
            text[name] = f.read(65536)
        return driver.report(run, code if code >= 0 else None, -code if code < 0 else None,
                             text["status"]), text
    finally:
        for f in files.values():
            f.close()


def _judge(driver_name: str, report: Report, said: str, what: str) -> None:
    """StartError, in the operator's words, unless the phase ended well."""
    if report.failed:
        raise StartError(
            f"cannot serve: the {driver_name} sandbox could not {what} a program in a box "
            f"({report.message}). It said: {said or report.detail or 'nothing'}. "
            f"Check that {driver_name} works on this host as root with the box uids "
            "(unprivileged user namespaces for bubblewrap), and that --state-dir and "
            "--cache-dir allow the box uids in and are not mounted noexec.")
    if report.signal is not None or report.exit_code != 0:
        how = (f"signal {report.signal}" if report.signal is not None
               else f"exit status {report.exit_code}")
        if report.exit_code in (126, 127):  # the shell in the box could not exec the program
            raise StartError(
                f"cannot serve: a box could not execute its program ({said[-300:]}): are "
                "--state-dir or --cache-dir on a file system mounted noexec? Give directories "
                "where programs may run.")
        raise StartError(
            f"cannot serve: the start-up {what} in a box ended with {how}: "
            f"{said[-500:] or 'it said nothing'}. A {what} of a one-line program fails only "
            "when the host is wrong: check the toolchain (--go), the standard-library cache "
            "(sandboxd-warm) and the limits (--limit).")


def _kill_uid(uid: int) -> None:
    for pid in boxprocs.pids_of(uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
