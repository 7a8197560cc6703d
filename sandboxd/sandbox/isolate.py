"""The isolate driver: ``isolate -b N --init / --run / --cleanup`` with its ``--meta`` file.

Works with released isolate (tested: 2.6, what its authors' Debian repository and a build of
its newest tag install; only options every 2.x has are used) and with its master.  Box N is
isolate's box N (its uid is isolate's ``first_uid + N``, its gid ``first_gid + N``; both come
from ``/etc/subuid`` and ``/etc/subgid`` when the config names a ``subid_user``, isolate's stock
configuration); a session keeps its isolate box between runs.  Without ``--cg`` isolate limits
with rlimits; the daemon still puts the whole isolate process tree into its own cgroup where the
host has one (see ``sandboxd.sandbox.cgroup``), so memory and processes are bounded for the box as a
whole.

Every build and run starts as sandboxd's box init (``sandboxd.sandbox.boxinit``, passed as a
descriptor with ``--inherit-fds``), which installs sandboxd's own seccomp filter -- the one
bubblewrap boxes get -- on top of isolate's, then becomes the program.  isolate's own filter stays:
where its configuration forbids file locks (``syscall_flags`` bit 4, the default), a build's filter
makes ``flock`` return 0 without locking, which ``go build`` needs to read go.mod (a filter
installed later decides among equal actions); ``--syscalls``, which only isolate's master knows, is
never passed.

isolate is started in its own process group with ``PR_SET_PDEATHSIG`` = SIGTERM (``setpriv
--pdeathsig``): if the daemon dies, even by SIGKILL, isolate kills the box at once (it handles
SIGTERM so), as bwrap's ``--die-with-parent`` does.  The daemon stops a run with SIGTERM (isolate
then kills the box and writes its meta file), then SIGKILL to the group: SIGKILL to isolate
alone would leave the box running unlimited.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from twisted.logger import Logger

from sandboxd.boxes import hostfs
from sandboxd.boxes.box import Box
from sandboxd.sandbox import boxinit, seccomp
from sandboxd.sandbox.cgroup import CgroupSupport
from sandboxd.sandbox.driver import (
    INIT_FD,
    LAUNCHER_FAILED,
    SECCOMP_FD,
    Driver,
    DriverError,
    Report,
    SandboxRun,
)
from sandboxd.status import Phase

log = Logger()

CONFIG = Path("/usr/local/etc/isolate")  # isolate built from source (make install)
PACKAGE_CONFIG = Path("/etc/isolate")  # its authors' Debian package (PREFIX=/usr)
# isolate's syscall_flags: its default is every restriction; bit 4 forbids file locks.
SYSCALL_FLAGS_ALL = 0xFFFF
SYSCALL_FILE_LOCKS = 4


def config_path() -> Path:
    """isolate reads the config its build named: /usr/local/etc/isolate, or /etc/isolate for
    the Debian package (binary in /usr/bin)."""
    binary = shutil.which("isolate")
    if binary is not None and Path(binary).resolve().parent == Path("/usr/bin"):
        return PACKAGE_CONFIG
    return CONFIG


def read_config(path: Path | None = None) -> dict[str, str]:
    if path is None:
        path = config_path()
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        m = re.match(r"\s*([a-z_]+)\s*=\s*(\S+)", line)
        if m:
            values[m.group(1)] = m.group(2)
    return values


def _subid(path: Path, user: str) -> tuple[int, int]:
    """The start and length of ``user``'s range in /etc/subuid or /etc/subgid (isolate takes
    the first line naming the user)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DriverError(f"isolate's subid_user needs {path}: {e.strerror}") from None
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == user:
            try:
                return int(fields[1]), int(fields[2])
            except ValueError:
                break
    raise DriverError(f"isolate's subid_user {user!r} has no range in {path}")


def box_ids(config: dict[str, str], subuid: Path = Path("/etc/subuid"),
            subgid: Path = Path("/etc/subgid")) -> tuple[int, int, int]:
    """(first_uid, first_gid, num_boxes) exactly as isolate derives them from its config."""
    try:
        num = int(config.get("num_boxes", "0"))
        if "subid_user" in config:
            if "first_uid" in config or "first_gid" in config:
                raise DriverError("isolate's config names both subid_user and first_uid/first_gid "
                                  "(isolate refuses it)")
            first_uid, uids = _subid(subuid, config["subid_user"])
            first_gid, gids = _subid(subgid, config["subid_user"])
            if num and num > min(uids, gids):
                raise DriverError(f"isolate's num_boxes={num} but subid_user "
                                  f"{config['subid_user']!r} has only {min(uids, gids)} ids")
            return first_uid, first_gid, num or min(uids, gids)
        first_uid = int(config.get("first_uid", "0"))
        first_gid = int(config.get("first_gid", "0"))
    except ValueError as e:
        raise DriverError(f"isolate's config: {e}") from None
    if not (first_uid and first_gid and num):
        raise DriverError("isolate's config names neither subid_user nor first_uid, first_gid "
                          "and num_boxes")
    return first_uid, first_gid, num


def parse_meta(text: str) -> dict[str, str]:
    meta: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            meta[key.strip()] = value.strip()
    return meta


class IsolateDriver(Driver):
    name = "isolate"
    graceful_stop = True
    cpu_backstop = "isolate --time/--extra-time on the program's main process"

    needs_init = True  # sandboxd.sandbox.boxinit, set by the toolchain's warm step (use_init)

    def __init__(self, state_dir: Path, cgroups: CgroupSupport, first_uid: int = 60000) -> None:
        super().__init__(state_dir, cgroups, first_uid)
        self.isolate = self.tool("isolate")
        self.setsid = self.tool("setsid")
        self.setpriv = self.tool("setpriv")
        self.unshare = self.tool("unshare")
        path = config_path()
        if not path.is_file():
            raise DriverError(f"isolate's config {path} is missing")
        config = read_config(path)
        self.box_root = Path(config.get("box_root", "/var/local/lib/isolate"))
        self.first_uid, self.first_gid, self.num_boxes = box_ids(config)
        try:
            flags = int(config.get("syscall_flags", str(SYSCALL_FLAGS_ALL)), 0)
        except ValueError:
            raise DriverError(f"isolate's config: bad syscall_flags in {path}") from None
        self.fake_flock = bool(flags & SYSCALL_FILE_LOCKS)
        try:
            seccomp.program()
        except seccomp.UnsupportedArch as e:
            raise DriverError(f"the isolate driver needs sandboxd's seccomp filter: {e}") from None
        self.init_binary: Path | None = None
        self.meta_dir = state_dir / "isolate-meta"
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.meta_dir, 0o700)
        self.prog_dir = state_dir / "isolate-prog"
        self.prog_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.prog_dir, 0o711)

    @property
    def warm_box_number(self) -> int:
        return self.num_boxes - 1

    def gid_for(self, number: int) -> int:
        return self.first_gid + number

    def use_init(self, path: Path) -> None:
        self.init_binary = path

    def check_box_range(self, first: int, count: int) -> None:
        if first < 0 or first + count > self.warm_box_number:
            raise DriverError(
                f"isolate has boxes 0-{self.num_boxes - 1} (num_boxes); this daemon needs "
                f"{first}-{first + count - 1} (--first-box, then up to 3 x --boxes + "
                f"--max-sessions + 2) and {self.warm_box_number} to warm the Go cache: lower "
                "them or raise isolate's num_boxes")

    def describe(self) -> list[str]:
        lines = super().describe()
        if self.own_cgroups:
            lines = [line for line in lines
                     if not line.startswith(("memory:", "processes:", "cpu time:"))]
            lines += ["memory: isolate --cg --cg-mem (cgroup v2, the whole box)",
                      "processes: isolate --cg --processes (cgroup v2 pids)",
                      "cpu time: isolate --cg --time (the whole box's cgroup)"]
        lines = [line if not line.startswith("wall time:") else
                 "wall time: daemon timer (and isolate --wall-time), then SIGTERM to isolate "
                 "(it kills the box), SIGKILL of its process group and of the box uid 0.5 s "
                 "later" for line in lines]
        return [*lines,
                "/tmp, /var/tmp and /dev/shm: a fresh daemon-mounted tmpfs per run "
                "(size and inodes bounded)",
                "system calls: sandboxd's seccomp filter (installed by the box's init; the "
                "same as bubblewrap's) on top of isolate's own"
                + (" (builds: flock returns 0 without locking, isolate's config forbids "
                   "file locks)" if self.fake_flock else ""),
                "daemon death: PR_SET_PDEATHSIG SIGTERM on isolate, which kills the box",
                "file size: isolate -f (RLIMIT_FSIZE)", "open files: isolate --open-files"]

    def _isolate(self, number: int, *args: str) -> str:
        # --cgroups=isolate: a box is made and removed in the cgroup mode it runs in (isolate
        # refuses a --cg run in a box initialised without --cg: "incompatible control group
        # mode"; seen in the cgroup-v2 guest, tests/guest/test_isolate_cg.py).
        cg = ["--cg"] if self.own_cgroups and args[:1] in (("--init",), ("--cleanup",)) else []
        proc = subprocess.run(
            [self.isolate, "-b", str(number), *cg, *args], capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=60,
        )
        if proc.returncode != 0:
            raise DriverError(f"isolate -b {number} {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    # -- boxes: the daemon's tmpfs workspace as /box, isolate's box around it ---------------

    def create_box(self, box: Box, disk_mb: int) -> None:
        if box.number >= self.num_boxes:
            raise DriverError(f"isolate has only {self.num_boxes} boxes (num_boxes)")
        super().create_box(box, disk_mb)
        self._isolate(box.number, "--init")

    def destroy_box(self, box: Box) -> None:
        super().destroy_box(box)
        hostfs.remove_tree(self.prog_dir / str(box.number))
        self._isolate(box.number, "--cleanup")

    def sweep(self) -> None:
        numbers = {int(e.name.split(".")[0]) for e in self.boxes_dir.iterdir()
                   if e.name.split(".")[0].isdigit()}
        super().sweep()
        for number in numbers:
            try:
                self._isolate(number, "--cleanup")
            except DriverError as e:
                log.warn("sweeping isolate box {n}: {e}", n=number, e=e)
        for entry in self.prog_dir.iterdir():
            hostfs.remove_tree(entry)

    # -- running ---------------------------------------------------------------------------

    def _meta(self, run: SandboxRun) -> Path:
        tag = f"-{run.tag}" if run.tag else ""
        return self.meta_dir / f"{run.box.number}-{run.phase}{tag}.meta"

    def command(self, run: SandboxRun) -> tuple[list[str], dict[str, str]]:
        lim = run.limits
        meta = self._meta(run)
        meta.unlink(missing_ok=True)
        cpu = lim.cpu_ms / 1000
        if self.init_binary is None:
            raise DriverError("the isolate box init was not built (toolchain warm step)")
        run.fds[SECCOMP_FD] = seccomp.program_fd(
            fake_flock=self.fake_flock and run.phase is Phase.BUILD)
        run.fds[INIT_FD] = os.open(self.init_binary, os.O_RDONLY | os.O_CLOEXEC)
        # isolate (without --cg) gives the box no cgroup namespace of its own: its
        # /proc/self/cgroup would name the daemon's cgroups (and the host's above them).  A
        # new one made after the launcher joined the run's cgroup shows that cgroup as "/".
        private_cgroups = [] if self.own_cgroups else [self.unshare, "--cgroup"]
        argv = [
            self.setpriv, "--pdeathsig=TERM", "--",
            *private_cgroups,
            self.setsid, self.isolate, "-b", str(run.box.number), "-s", f"--meta={meta}",
            "--inherit-fds",
            f"--processes={self.nproc(run)}",
            f"--time={cpu:.3f}", f"--extra-time={cpu + 0.5:.3f}",
            f"--wall-time={lim.wall_ms / 1000 + 1:.3f}",
            f"--fsize={lim.file_size_mb * 1024}",
            f"--open-files={lim.open_files}",
            f"--chdir={run.cwd}",
        ]
        if self.own_cgroups:
            argv += ["--cg", f"--cg-mem={lim.memory_mb * 1024}"]
        elif run.cgroup is None:
            argv.append(f"--mem={(lim.memory_mb + 1024) * 1024}")
        tmp = run.tmp = self._fresh_tmp(run.box, lim.disk_mb, self.tmp_tag(run))
        argv += [f"--dir=/tmp={tmp}/tmp:rw", f"--dir=/dev/shm={tmp}/shm:rw",
                 f"--dir=/var/tmp={tmp}/tmp:rw"]
        if run.network:
            argv += ["--share-net", "--dir=/etc=/etc"]
        else:
            argv.append(f"--dir=/etc={self.box_etc(run)}")
        if run.with_workspace:
            argv.append(f"--dir=/box={run.box.workspace}:rw")
        else:
            # Not isolate's own /box (a plain directory under its box_root: the box would see
            # that path in its mount table, and it would outlive the run): an empty one on
            # the run's own tmpfs.
            hostfs.make_private_dir(tmp / "box", run.box.uid, run.box.gid, 0o700)
            argv.append(f"--dir=/box={tmp}/box:rw")
        for mount in run.mounts:
            host = mount.host
            inside = mount.inside
            if host.is_file():
                # isolate mounts directories only: give the file a directory of its own.
                holder = self.prog_dir / str(run.box.number)
                hostfs.remove_tree(holder)
                holder.mkdir(mode=0o755)
                os.link(host, holder / os.path.basename(inside))
                host, inside = holder, os.path.dirname(inside)
            argv.append(f"--dir={inside}={host}{':rw' if mount.writable else ''}")
        for key, value in run.env.items():
            argv.append(f"--env={key}={value}")
        argv += ["--run", "--", f"/proc/self/fd/{INIT_FD}", *run.argv]
        return [*self.launcher(run), *argv], {"PATH": "/usr/bin:/bin"}

    def report(
        self, run: SandboxRun, exit_code: int | None, signal: int | None, status: bytes
    ) -> Report:
        if exit_code == LAUNCHER_FAILED:
            return Report(exit_code=exit_code, failed=True,
                          message="could not place the process in its cgroup")
        try:
            meta = parse_meta(self._meta(run).read_text())
        except OSError:
            meta = {}
        finally:
            self._meta(run).unlink(missing_ok=True)
        if not meta:
            if signal is None and exit_code is not None:
                # It exited by itself and wrote no meta file: it failed before the box ran.
                return Report(exit_code=exit_code, failed=True,
                              message="the sandbox could not start the program")
            # isolate itself was killed (by us, for a limit or a cancel).
            return Report(signal=signal or 9)
        if boxinit.READY not in status and (
                boxinit.FAILED_PREFIX in status or meta.get("exitcode") == "127"):
            # The box's init could not put the filter in place or start the program.
            line = status.decode(errors="replace").strip().splitlines()
            return Report(failed=True, message=line[-1] if line else
                          "the box's init did not start (isolate could not run it)")
        report = Report()
        if "time" in meta:
            report.cpu_ms = round(float(meta["time"]) * 1000)
        if "time-wall" in meta:
            report.wall_ms = round(float(meta["time-wall"]) * 1000)
        if "cg-mem" in meta:
            report.memory_kb = int(meta["cg-mem"])
        elif "max-rss" in meta and run.cgroup is None:
            report.memory_kb = int(meta["max-rss"])
        report.memory_exceeded = meta.get("cg-oom-killed") == "1"
        code = meta.get("status", "")
        if code == "XX":
            report.failed = True
            report.message = "the sandbox failed"  # its own words name host paths: the log's
            report.detail = meta.get("message", "")
        elif code == "TO":
            report.timed_out = "wall" if "wall" in meta.get("message", "") else "cpu"
            if "killed" not in meta and run.phase is Phase.BUILD:
                # Over the CPU limit only by isolate's count after the end, which adds the
                # compile and link children it never watched live (and then writes no
                # exitcode): the build ran to its end, its output says whether it worked.
                report.timed_out = None
        if "exitsig" in meta:
            report.signal = int(meta["exitsig"])
        elif "exitcode" in meta:
            report.exit_code = int(meta["exitcode"])
        elif not report.failed and report.timed_out is None:
            report.exit_code = 0 if exit_code == 0 else None
        if report.timed_out is None and run.phase is Phase.BUILD and code == "TO":
            report.exit_code = 0
        return report
