"""The bubblewrap driver: unprivileged user namespaces, one uid per box, nothing shared.

Each process tree runs as its box's own uid (``setpriv``), under rlimits (``prlimit``), inside
``bwrap`` with every namespace unshared: its own pid namespace (killing bwrap kills every
process of the box, ``setsid`` and double forks included), no network, read-only system
directories and toolchain, and as writable places only the box (a size-bounded tmpfs the daemon
mounted) and private, size-bounded ``/tmp`` and ``/dev/shm``.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sandboxd.boxes.hostfs import MIB
from sandboxd.sandbox import seccomp
from sandboxd.sandbox.cgroup import CgroupSupport
from sandboxd.sandbox.driver import (
    ARGS_FD,
    HOLD_FD,
    LAUNCHER_FAILED,
    PROGRAM_STDERR_FD,
    SECCOMP_FD,
    STATUS_FD,
    Driver,
    Report,
    SandboxRun,
)

SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32", "/sbin")


# What a download step with network needs to resolve names and check TLS certificates.
NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl")

# Inside the box, before the program: its stderr becomes PROGRAM_STDERR_FD, so fd 2 (where
# bwrap, setpriv and prlimit write their errors, host paths included) carries tool messages only.
STDERR_SHIM = ["/bin/sh", "-c", f'exec 2>&{PROGRAM_STDERR_FD} {PROGRAM_STDERR_FD}>&-; exec "$@"',
               "sandboxd"]


def options_fd(options: list[str]) -> int:
    """A fresh descriptor, at its start, holding ``options`` NUL-separated (bwrap --args)."""
    if any("\0" in option for option in options):
        raise ValueError("a bwrap option cannot hold a NUL")
    fd = os.memfd_create("sandboxd-bwrap-args", os.MFD_CLOEXEC)
    if fd < 16:
        # Never the number it gets in the child: dup2 onto itself would keep CLOEXEC.
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 16)
        os.close(fd)
        fd = high
    try:
        data = b"".join(option.encode("utf-8", "surrogateescape") + b"\0" for option in options)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_options(fd: int) -> list[str]:
    """What ``options_fd`` wrote (for tests and diagnostics)."""
    data = os.pread(fd, os.fstat(fd).st_size, 0)
    return [part.decode("utf-8", "surrogateescape") for part in data.split(b"\0")[:-1]]


class BubblewrapDriver(Driver):
    name = "bubblewrap"
    can_hold = True  # bwrap --block-fd: namespaces, mounts and limits set up, program not yet
    stderr_fd = PROGRAM_STDERR_FD

    def __init__(self, state_dir: Path, cgroups: CgroupSupport, first_uid: int = 60000) -> None:
        super().__init__(state_dir, cgroups, first_uid)
        self.bwrap = self.tool("bwrap")
        self.setpriv = self.tool("setpriv")
        self.prlimit = self.tool("prlimit")
        self.system = self._system_layout()
        try:
            seccomp.program()
            self.seccomp = True
        except seccomp.UnsupportedArch:
            self.seccomp = False

    def prepare(self, run: SandboxRun) -> None:
        if self.use_tmpfs:
            # /tmp and /dev/shm bounded in inodes too, which bwrap's --tmpfs cannot do.
            run.tmp = self._fresh_tmp(run.box, run.limits.disk_mb, self.tmp_tag(run))

    def describe(self) -> list[str]:
        syscalls = ("seccomp filter: mount, ptrace, unshare, bpf, io_uring, keyrings, kexec, "
                    "modules, inotify and new namespaces refused (EPERM); sockets only AF_UNIX, "
                    "AF_INET, AF_INET6, netlink routes" if self.seccomp
                    else "no seccomp filter for this architecture (capabilities dropped only)")
        tmp = ("/tmp, /var/tmp and /dev/shm: a fresh daemon-mounted tmpfs per run (size and "
               "inodes bounded)" if self.use_tmpfs else
               "/tmp and /dev/shm: bwrap tmpfs --size (no inode bound)")
        return [*super().describe(), tmp,
                "file size: RLIMIT_FSIZE", "open files: RLIMIT_NOFILE", syscalls]

    @staticmethod
    def _system_layout() -> list[str]:
        args: list[str] = []
        for path in SYSTEM_DIRS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        return args

    # -- running ---------------------------------------------------------------------------

    def command(self, run: SandboxRun) -> tuple[list[str], dict[str, str]]:
        sandbox = [self.bwrap, *self._namespaces(run), *self._filesystem(run),
                   *self._kernel_filters(run), "--chdir", run.cwd, "--clearenv"]
        for key, value in run.env.items():
            sandbox += ["--setenv", key, value]
        # Every option (host paths: the box, its /tmp, the program's directory) goes to bwrap
        # on a descriptor, not its command line: bwrap stays the box's pid 1, and its
        # /proc/1/cmdline is readable inside.  bwrap reads the descriptor and closes it.
        run.fds[ARGS_FD] = options_fd(sandbox[1:])
        command = [self.bwrap, "--args", str(ARGS_FD), "--", *STDERR_SHIM, *run.argv]
        return ([*self.launcher(run), *self._rlimits(run), *self._identity(run), *command],
                {"PATH": "/usr/bin:/bin"})

    def _rlimits(self, run: SandboxRun) -> list[str]:
        """prlimit's part: the box's process, file, size, CPU (and, without a cgroup, address
        space) limits."""
        lim = run.limits
        cpu_s = (lim.cpu_ms + 999) // 1000 + 1
        rlimits = [
            self.prlimit,
            f"--nproc={self.nproc(run)}",
            f"--nofile={lim.open_files}",
            f"--fsize={lim.file_size_mb * MIB}",
            f"--cpu={cpu_s}:{cpu_s + 1}",
            "--core=0",
        ]
        if run.cgroup is None:
            rlimits.append(f"--as={(lim.memory_mb + 1024) * MIB}")
        return [*rlimits, "--"]

    def _identity(self, run: SandboxRun) -> list[str]:
        """setpriv's part: the box's uid and gid, no groups, no new privileges."""
        return [self.setpriv, f"--reuid={run.box.uid}", f"--regid={run.box.gid}",
                "--clear-groups", "--no-new-privs", "--pdeathsig=KILL", "--"]

    @staticmethod
    def _namespaces(run: SandboxRun) -> list[str]:
        """Every namespace new (the network's too, unless the run may use the host's)."""
        return ["--unshare-all", *(["--share-net"] if run.network else []), "--unshare-user",
                "--disable-userns", "--die-with-parent", "--new-session",
                "--json-status-fd", str(STATUS_FD), "--hostname", "sandbox"]

    def _filesystem(self, run: SandboxRun) -> list[str]:
        """What the box sees: the system read-only, its own /proc, /dev, bounded /tmp and
        /dev/shm, its /etc, its workspace and mounts; then the root read-only, so the only
        writable places are those mounts, each bounded (not /, not /prog, not /var)."""
        tmp_bytes = str(run.limits.disk_mb * MIB)
        mounts = [
            *self.system,
            "--proc", "/proc",
            "--dev", "/dev",
            *(["--bind", f"{run.tmp}/tmp", "/tmp", "--bind", f"{run.tmp}/shm", "/dev/shm"]
              if run.tmp is not None else
              ["--size", tmp_bytes, "--tmpfs", "/tmp", "--size", tmp_bytes, "--tmpfs",
               "/dev/shm"]),
            "--dir", "/var",
            "--symlink", "../tmp", "/var/tmp",
        ]
        if run.network:
            for path in NETWORK_FILES:
                if os.path.exists(path):
                    mounts += ["--ro-bind", path, path]
        else:  # its own network namespace (bwrap brings its loopback up), its own /etc
            mounts += ["--ro-bind", str(self.box_etc(run)), "/etc"]
        if run.with_workspace:
            mounts += ["--bind", str(run.box.workspace), "/box"]
        for mount in run.mounts:
            mounts += ["--bind" if mount.writable else "--ro-bind", str(mount.host), mount.inside]
        return [*mounts, "--remount-ro", "/"]

    def _kernel_filters(self, run: SandboxRun) -> list[str]:
        """The seccomp filter, and a held run's wait for its go-ahead."""
        options: list[str] = []
        if self.seccomp:
            run.fds[SECCOMP_FD] = seccomp.program_fd()
            options += ["--seccomp", str(SECCOMP_FD)]
        if run.hold:
            if HOLD_FD not in run.fds:
                raise ValueError("a held run needs the read end of its pipe at HOLD_FD")
            options += ["--block-fd", str(HOLD_FD)]
        return options

    def report(
        self, run: SandboxRun, exit_code: int | None, signal: int | None, status: bytes
    ) -> Report:
        if signal is not None:
            # bwrap itself was killed (by us, for a limit or a cancel).
            return Report(exit_code=None, signal=signal)
        # bwrap reports the program's "exit-code" only when the program was started (its
        # set-up finished and exec worked): without it, the sandbox failed, whatever the code.
        if b'"exit-code"' not in status:
            if exit_code == LAUNCHER_FAILED and b"child-pid" not in status:
                return Report(exit_code=exit_code, failed=True,
                              message="could not place the process in its cgroup")
            return Report(exit_code=exit_code, failed=True,
                          message="the sandbox could not start the program")
        if exit_code is not None and exit_code > 128:
            # bwrap's pid 1 reports a child killed by signal N as 128 + N.
            return Report(exit_code=None, signal=exit_code - 128)
        return Report(exit_code=exit_code)
