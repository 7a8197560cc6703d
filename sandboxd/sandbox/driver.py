"""The one small interface every sandbox driver implements."""

from __future__ import annotations

import errno
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from twisted.logger import Logger

from sandboxd.boxes import boxetc, hostfs
from sandboxd.boxes.box import Box
from sandboxd.limits import PhaseLimits
from sandboxd.sandbox.cgroup import CgroupSupport, RunCgroup
from sandboxd.status import Phase

log = Logger()

# Where a cgroup counts processes, the per-uid RLIMIT_NPROC is only a backstop set this much
# higher, so the cgroup refuses first and its count says the process limit was reached.
NPROC_BACKSTOP = 16

# The launcher: join the run's cgroups, then become the sandbox.  Runs before anything of the
# request, so no process of the request starts outside the cgroup.  Exit 125 means it failed.
# The shell exports PWD (the daemon's working directory) to what it starts: unset, since
# a box's pid 1 (bwrap) keeps its environment readable inside the box.
JOIN_SCRIPT = ('unset PWD; while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; '
               'shift; exec "$@"')
# The same, held: joined now, waits for a line on HOLD_FD before it starts the sandbox.
HELD_JOIN_SCRIPT = ('unset PWD; while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; '
                    'done; shift; read -r go <&5 || exit 125; exec 5<&-; exec "$@"')
LAUNCHER_FAILED = 125
# A pipe the sandbox may report its own progress on (bwrap's --json-status-fd).
STATUS_FD = 3
# Where the sandbox finds its seccomp filter (bwrap's --seccomp).
SECCOMP_FD = 4
# Where a held sandbox (see ``Driver.can_hold``) waits for the byte that lets its program start.
HOLD_FD = 5
# Where an isolate box finds sandboxd's box init (``sandboxd.sandbox.boxinit``), to run it first.
INIT_FD = 6
# Where bwrap reads its options (--args): a box's pid 1 is bwrap, and its command line is
# readable inside the box, so no host path may be on it.  (Not 6: the isolate box init's.)
ARGS_FD = 7
# The program's own stderr where the sandbox tool's stderr (fd 2) is kept apart from it (see
# ``Driver.stderr_fd``): what bwrap says about the host never reaches a client.  (Not 6 or 7.)
PROGRAM_STDERR_FD = 8

# What a program sees as its whole environment.
RUN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/box",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "USER": "sandbox",
}


class DriverError(RuntimeError):
    """The driver cannot work on this host; the message says what is missing."""


@dataclass(frozen=True)
class Mount:
    """A host path made visible inside the sandbox."""

    host: Path
    inside: str
    writable: bool = False


@dataclass
class SandboxRun:
    """One process tree to start in a box: a build or a run."""

    phase: Phase
    box: Box
    argv: list[str]
    env: dict[str, str]
    cwd: str
    limits: PhaseLimits
    mounts: list[Mount] = field(default_factory=list)
    cgroup: RunCgroup | None = None
    with_workspace: bool = True  # the box's files at /box
    network: bool = False  # the host's network (only a module download step, never a program)
    tmp: Path | None = None  # the run's own /tmp and /dev/shm (a daemon-mounted tmpfs)
    # Held: the sandbox is set up at once but starts the program only when ``HOLD_FD`` (read
    # end of a pipe the daemon owns) gets a byte, so the set-up overlaps the build.
    hold: bool = False
    # Held earlier, before the sandbox: only the launcher starts (it joins the cgroup, which
    # on cgroup v1 waits for an RCU grace period, ~6 ms) and waits for a line on ``HOLD_FD``
    # before it starts the sandbox.  Nothing runs as the box's uid until then.
    hold_launcher: bool = False
    # Names the run's own host-side files (its /tmp, isolate's meta file) apart from those of
    # other runs of the same box that may overlap it; "" for the usual ones.
    tag: str = ""
    # Extra descriptors for the child: its fd number -> the daemon's fd, closed after spawn.
    fds: dict[int, int] = field(default_factory=dict)

    def close_fds(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


@dataclass
class Report:
    """What the driver learned about how the process tree ended."""

    exit_code: int | None = None
    signal: int | None = None
    cpu_ms: int | None = None
    wall_ms: int | None = None
    memory_kb: int | None = None
    timed_out: str | None = None  # "wall" or "cpu" when the driver itself stopped it
    memory_exceeded: bool = False
    message: str = ""  # fixed wording, sent to the client: never a host path
    failed: bool = False  # the sandbox itself failed (not the program)
    detail: str = ""  # for the log only (what the sandbox tool said, host paths and all)


class Driver(ABC):
    """Makes boxes, turns a ``SandboxRun`` into a command line, reads how it ended."""

    name = "driver"
    # True: stop with SIGTERM to the launcher, then SIGKILL to its process group (isolate).
    graceful_stop = False
    # True: the sandbox makes and enforces its own cgroup (isolate --cg); the daemon makes none.
    own_cgroups = False
    # The descriptor the program's stderr arrives on; 2 means the sandbox tool's own messages
    # share it.  Another number: fd 2 carries only the tool's messages, logged, never sent.
    stderr_fd = 2
    # True: a run can be set up ahead and held until its program may start (``SandboxRun.hold``).
    can_hold = False
    warm_box_number = 4095
    # What stops a CPU-bound process should the daemon's polling not (see describe()).
    cpu_backstop = "RLIMIT_CPU per process"

    def __init__(self, state_dir: Path, cgroups: CgroupSupport, first_uid: int = 60000) -> None:
        self.state_dir = state_dir
        self.cgroups = cgroups
        self.first_uid = first_uid
        self.boxes_dir = state_dir / "boxes"
        self.boxes_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.boxes_dir, 0o711)
        self.use_tmpfs = True

    @staticmethod
    def tool(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            raise DriverError(f"{name} is not installed (see README: make setup)")
        return path

    def box_etc(self, run: SandboxRun) -> Path:
        """The box's own read-only /etc (see ``sandboxd.boxes.boxetc``) for ``run``: in its /tmp's
        tmpfs where it has one.  For every run that does not have the host's network (a
        module download step keeps the host's name files)."""
        box = run.box
        if run.tmp is None:
            return boxetc.ensure(self.state_dir / "etc", box.uid, box.gid)
        etc = run.tmp / "etc"
        if not etc.is_dir():
            boxetc.write(etc, box.uid, box.gid)
        return etc

    def uid_for(self, number: int) -> int:
        return self.first_uid + number

    def gid_for(self, number: int) -> int:
        return self.uid_for(number)

    # True: every run starts as ``sandboxd.sandbox.boxinit``; the toolchain's warm step builds it
    # and hands its path to ``use_init``.
    needs_init = False

    def use_init(self, path: Path) -> None:  # noqa: B027 (most drivers need none)
        """Where the box init binary is (drivers with ``needs_init``)."""

    def check_box_range(self, first: int, count: int) -> None:  # noqa: B027
        """Refuse a start whose box numbers ``first`` … ``first + count - 1`` the sandbox
        does not have (isolate: its ``num_boxes``)."""

    def workspace_for(self, number: int) -> Path:
        """Where box ``number``'s files live on the host."""
        return self.state_dir / "boxes" / str(number)

    def launcher(self, run: SandboxRun) -> list[str]:
        """The argv prefix that puts the process into its cgroup first."""
        if run.cgroup is None:
            return []
        script = HELD_JOIN_SCRIPT if run.hold_launcher else JOIN_SCRIPT
        return ["/bin/sh", "-c", script, "sandboxd-join", *run.cgroup.procs_files, "--"]

    @staticmethod
    def nproc(run: SandboxRun) -> int:
        """RLIMIT_NPROC for ``run``: the limit itself, or a backstop above the cgroup's."""
        return run.limits.processes + (NPROC_BACKSTOP if run.cgroup is not None else 0)

    def describe(self) -> list[str]:
        """One line per limit: which mechanism enforces it on this host."""
        cg = self.cgroups.version is not None
        how = f"cgroup v{self.cgroups.version}" if cg else "rlimit"
        disk = (
            "a tmpfs the daemon mounts per box (size and inode bounded)"
            if self.use_tmpfs
            else "a plain directory; only RLIMIT_FSIZE bounds it (mounting a tmpfs failed)"
        )
        if cg:
            memory = (f"cgroup v{self.cgroups.version} memory controller, the whole box "
                      "(its first OOM kill ends the box: memory_limit)")
            processes = "cgroup pids controller for the whole box, + RLIMIT_NPROC per box uid"
            cpu = (f"{how} CPU accounting of the whole box, polled every 50 ms "
                   f"(+ {self.cpu_backstop} as a backstop)")
        else:
            memory = ("RLIMIT_AS per process (memory + 1 GiB headroom, which Go needs to "
                      "start; the Go runtime's 'out of memory' is reported as memory_limit), "
                      "and the resident memory of the box uid's processes summed, polled "
                      "every 100 ms")
            processes = "RLIMIT_NPROC per box uid"
            cpu = ("CPU time of the box uid's processes, polled every 100 ms "
                   f"(+ {self.cpu_backstop} as a backstop)")
        return [
            f"box disk: {disk}",
            "build disk: the build's /tmp and its own directory (source, binary, modules) are "
            "tmpfs of build.disk_mb each",
            f"memory: {memory}",
            f"processes: {processes}",
            f"cpu time: {cpu}",
            "wall time: daemon timer, then SIGKILL of the whole box (its pid namespace"
            + (", its cgroup" if cg else ", every process of its uid") + ")",
            "output: counted by the daemon per request; the box is killed at the limit",
        ]

    # -- boxes: a tmpfs per box, mounted by the daemon ---------------------------------

    def create_box(self, box: Box, disk_mb: int) -> None:
        path = box.workspace
        hostfs.remove_mounted(path)
        hostfs.make_private_dir(path, 0, 0, 0o700)
        if self.use_tmpfs:
            try:
                hostfs.mount_tmpfs(path, *hostfs.tmpfs_bounds(disk_mb), box.uid, box.gid)
                return
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EACCES):
                    raise
                self.use_tmpfs = False
                log.warn("cannot mount a tmpfs for boxes ({e}); box disk is bounded by "
                         "RLIMIT_FSIZE only", e=e)
        os.chown(path, box.uid, box.gid)

    def wipe_box(self, box: Box, disk_mb: int) -> None:
        self.destroy_box(box)
        self.create_box(box, disk_mb)

    def destroy_box(self, box: Box) -> None:
        hostfs.remove_mounted(box.workspace)
        self._remove_tmp(box.number)

    @staticmethod
    def tmp_tag(run: SandboxRun) -> str:
        """Which of a box's /tmp directories ``run`` has: a held run and a build held ahead
        are made while another run of the box may still use the plain one."""
        return run.tag or ("held" if run.hold else "")

    def _tmp_for(self, number: int, tag: str = "") -> Path:
        return self.boxes_dir / (f"{number}.{tag}.tmp" if tag else f"{number}.tmp")

    def _remove_tmp(self, number: int, tag: str | None = None) -> None:
        if tag is None:  # all but a held build's: it removes its own when it ends
            every = [self._tmp_for(number), self._tmp_for(number, "held")]
        else:
            every = [self._tmp_for(number, tag)]
        for tmp in every:
            hostfs.remove_mounted(tmp)

    def _fresh_tmp(self, box: Box, disk_mb: int, tag: str = "") -> Path:
        """A new, empty /tmp and /dev/shm for each run: one daemon-mounted tmpfs bounded in
        size and inodes (a tmpfs without an inode bound lets a box fill the host's kernel
        memory with empty files where no cgroup counts it).  isolate's own /tmp would persist
        between runs, and its /dev/shm is the host's."""
        tmp = self._tmp_for(box.number, tag)
        hostfs.remove_mounted(tmp)
        hostfs.make_private_dir(tmp, 0, 0, 0o711)
        if self.use_tmpfs:
            hostfs.mount_tmpfs(tmp, *hostfs.tmpfs_bounds(disk_mb), 0, 0)
            os.chmod(tmp, 0o711)
        for name in ("tmp", "shm"):
            hostfs.make_private_dir(tmp / name, box.uid, box.gid, 0o700)
        return tmp

    def prepare(self, run: SandboxRun) -> None:  # noqa: B027 (most drivers need nothing)
        """Host-side set-up for ``run`` just before its command is made and started."""

    def finish(self, run: SandboxRun) -> None:
        """Host-side clean-up once every process of ``run`` has ended: its /tmp goes at once
        (its pages are memory) rather than at the box's next run."""
        if run.tmp is not None:
            self._remove_tmp(run.box.number, self.tmp_tag(run))
            run.tmp = None

    def resize_box(self, box: Box, disk_mb: int) -> None:
        if self.use_tmpfs and hostfs.is_mountpoint(box.workspace):
            try:
                hostfs.mount_tmpfs(box.workspace, *hostfs.tmpfs_bounds(disk_mb), box.uid,
                                   box.gid, remount=True)
            except OSError as e:
                log.info("{box}: cannot resize to {mb} MiB ({e}); keeping its size",
                         box=box, mb=disk_mb, e=e)

    def sweep(self) -> None:
        for entry in self.boxes_dir.iterdir():
            hostfs.remove_mounted(entry)

    @abstractmethod
    def command(self, run: SandboxRun) -> tuple[list[str], dict[str, str]]:
        """The host argv and environment that start ``run``."""

    @abstractmethod
    def report(
        self, run: SandboxRun, exit_code: int | None, signal: int | None, status: bytes
    ) -> Report:
        """How the run ended: the launcher's exit status, what it wrote on ``STATUS_FD``."""
