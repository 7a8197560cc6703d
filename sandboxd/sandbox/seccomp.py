"""A seccomp filter for bubblewrap boxes: the kernel's attack surface a Go program never needs.

bwrap already drops every capability, so most of these calls would fail with EPERM anyway; the
filter makes that hold even where the kernel has a bug behind the capability check (user
namespaces, io_uring, bpf and userfaultfd are where sandbox escapes have come from).  It is a
classic-BPF program, written here with ``struct`` so no libseccomp binding is needed, and handed
to ``bwrap --seccomp FD``.  Denied calls return EPERM; ``clone3`` returns ENOSYS (its flags sit
behind a pointer the filter cannot read), so libc and Go fall back to ``clone``, whose flags the
filter checks for new namespaces.  Calls of another architecture (i386 or x32 on x86_64) are
refused outright, so they cannot be used to get round the numbers below.

Sockets: ``socket`` and ``socketpair`` may make only the families a box's own network namespace
holds: AF_UNIX, AF_INET, AF_INET6 (its own loopback) and AF_NETLINK with protocol NETLINK_ROUTE
(Go's ``net.Interfaces`` reads the box's own interfaces with it).  Any other family (AF_VSOCK,
which no namespace separates, AF_PACKET, AF_ALG, AF_KEY, AF_BLUETOOTH, ... and with them the
kernel modules a socket of a rare family would load) fails with EAFNOSUPPORT, what a kernel
without the family says; any other netlink protocol (netfilter, audit, uevents, xfrm, ...) fails
with EPROTONOSUPPORT.  ``ioctl`` TIOCSTI and TIOCLINUX (typing into or driving a terminal) fail
with EPERM, though a box is never given a terminal.

The same program is installed in isolate boxes by ``sandboxd/boxinit`` (see
``sandboxd.sandbox.isolate``).  There a build may also be given ``fake_flock``: ``flock`` then
returns 0 without locking, overriding isolate's own ENOSYS (released isolate forbids file locks
machine-wide, and ``go build`` cannot read go.mod without ``flock``; one build runs one ``go``
command in directories of its own, so there is nothing to lock against).
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import struct

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
_NR, _ARCH, _ARG0_LOW, _ARG1_LOW, _ARG2_LOW = 0, 4, 16, 24, 32

_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000

# Socket families a box's own network namespace holds (see the module's doc).
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
NETLINK_ROUTE = 0
ALLOWED_FAMILIES = (AF_UNIX, AF_INET, AF_INET6)
TIOCSTI, TIOCLINUX = 0x5412, 0x541C

# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
CLONE_NAMESPACES = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
                    | 0x20000000 | 0x40000000 | 0x00000080)

DENIED = (
    "ptrace", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd",
    "process_vm_readv", "process_vm_writev", "swapon", "swapoff", "reboot", "acct",
    "quotactl", "quotactl_fd", "open_by_handle_at", "name_to_handle_at",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "syslog", "lookup_dcookie", "vhangup",
    # A watch on an inode every box shares with the host (/usr, the toolchain) sees the
    # host's and other boxes' opens and reads of it.
    "inotify_init1", "fanotify_init",
)

SYSCALLS = {
    "x86_64": {
        "clone": 56, "ptrace": 101, "syslog": 103, "vhangup": 153, "pivot_root": 155,
        "chroot": 161, "acct": 163, "mount": 165, "umount2": 166, "swapon": 167,
        "swapoff": 168, "reboot": 169, "init_module": 175, "delete_module": 176,
        "quotactl": 179, "lookup_dcookie": 212, "kexec_load": 246, "add_key": 248,
        "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
        "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308,
        "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
        "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
        "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435,
        "mount_setattr": 442, "quotactl_fd": 443,
        "socket": 41, "socketpair": 53, "ioctl": 16, "flock": 73, "inotify_init1": 294,
        "fanotify_init": 300,
        # x86_64 only
        "iopl": 172, "ioperm": 173, "uselib": 134, "inotify_init": 253,
    },
    "aarch64": {
        "lookup_dcookie": 18, "umount2": 39, "mount": 40, "pivot_root": 41, "chroot": 51,
        "vhangup": 58, "quotactl": 60, "acct": 89, "unshare": 97, "kexec_load": 104,
        "init_module": 105, "delete_module": 106, "syslog": 116, "ptrace": 117,
        "reboot": 142, "add_key": 217, "request_key": 218, "keyctl": 219, "clone": 220,
        "swapon": 224, "swapoff": 225, "perf_event_open": 241, "name_to_handle_at": 264,
        "open_by_handle_at": 265, "setns": 268, "process_vm_readv": 270,
        "process_vm_writev": 271, "finit_module": 273, "bpf": 280, "userfaultfd": 282,
        "kexec_file_load": 294, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435, "mount_setattr": 442,
        "quotactl_fd": 443, "socket": 198, "socketpair": 199, "ioctl": 29, "flock": 32,
        "inotify_init1": 26, "fanotify_init": 262,
    },
}
X86_ONLY = ("iopl", "ioperm", "uselib", "inotify_init")


class UnsupportedArch(RuntimeError):
    """No filter is known for this machine's architecture."""


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


# One step of the filter before it is assembled: an instruction ``(code, jt, jf, k)`` whose
# ``jt`` may be ``("ALLOW",)`` (a jump to the final allow), or a return marker such as
# ``("DENY",)``.
_Step = tuple


def program(arch: str | None = None, fake_flock: bool = False) -> bytes:
    """The compiled filter (an array of ``struct sock_filter``) for ``arch``; ``fake_flock``:
    ``flock`` returns 0 without locking (a build under isolate: see the module's doc)."""
    arch = arch or platform.machine()
    if arch not in SYSCALLS:
        raise UnsupportedArch(f"no seccomp filter for {arch}")
    table = SYSCALLS[arch]
    # Layout: checks jump forward to one of the returns; the last step is the final ALLOW.
    body = [*_this_arch_only(arch), *_denied_calls(arch, table, fake_flock),
            *_ioctl_checks(table), *_socket_checks(table), *_clone_checks(table), ("ALLOW",)]
    return _assemble(body)


def _this_arch_only(arch: str) -> list[_Step]:
    """Another architecture's calling convention (and x32's numbers) is denied outright."""
    steps: list[_Step] = [(_LD_ABS, 0, 0, _ARCH), (_JEQ, 1, 0, AUDIT_ARCH[arch]), ("DENY",),
                          (_LD_ABS, 0, 0, _NR)]
    if arch == "x86_64":
        steps += [(_JGE, 0, 1, X32_SYSCALL_BIT), ("DENY",)]
    return steps


def _denied_calls(arch: str, table: dict[str, int], fake_flock: bool) -> list[_Step]:
    """The calls refused by number; clone3 as absent (so libc falls back to clone); flock
    faked when asked."""
    steps: list[_Step] = []
    for name in (*DENIED, *(X86_ONLY if arch == "x86_64" else ())):
        steps += [(_JEQ, 0, 1, table[name]), ("DENY",)]
    steps += [(_JEQ, 0, 1, table["clone3"]), ("NOSYS",)]
    if fake_flock:
        steps += [(_JEQ, 0, 1, table["flock"]), ("ZERO",)]
    return steps


def _ioctl_checks(table: dict[str, int]) -> list[_Step]:
    """ioctl: no typing into a terminal (TIOCSTI) nor driving the console (TIOCLINUX)."""
    return [(_JEQ, 0, 4, table["ioctl"]), (_LD_ABS, 0, 0, _ARG1_LOW), (_JEQ, 1, 0, TIOCSTI),
            (_JEQ, 0, 1, TIOCLINUX), ("DENY",), (_LD_ABS, 0, 0, _NR)]


def _socket_checks(table: dict[str, int]) -> list[_Step]:
    """socket and socketpair: only the families of the box's own network namespace (netlink:
    only NETLINK_ROUTE)."""
    steps: list[_Step] = [(_JEQ, 1, 0, table["socket"]), (_JEQ, 0, 9, table["socketpair"]),
                          (_LD_ABS, 0, 0, _ARG0_LOW)]
    steps += [(_JEQ, ("ALLOW",), 0, family) for family in ALLOWED_FAMILIES]
    return [*steps, (_JEQ, 1, 0, AF_NETLINK), ("NOFAMILY",), (_LD_ABS, 0, 0, _ARG2_LOW),
            (_JEQ, ("ALLOW",), 0, NETLINK_ROUTE), ("NOPROTO",), (_LD_ABS, 0, 0, _NR)]


def _clone_checks(table: dict[str, int]) -> list[_Step]:
    """clone: no new namespaces."""
    return [(_JEQ, 0, 3, table["clone"]), (_LD_ABS, 0, 0, _ARG0_LOW),
            (_JSET, 0, 1, CLONE_NAMESPACES), ("DENY",)]


_RETURNS = {
    ("DENY",): RET_ERRNO | errno.EPERM, ("NOSYS",): RET_ERRNO | errno.ENOSYS,
    ("ALLOW",): RET_ALLOW, ("ZERO",): RET_ERRNO | 0,
    ("NOFAMILY",): RET_ERRNO | errno.EAFNOSUPPORT,
    ("NOPROTO",): RET_ERRNO | errno.EPROTONOSUPPORT,
}


def _assemble(body: list[_Step]) -> bytes:
    """The steps as BPF instructions: markers become returns, a jump to ``("ALLOW",)`` goes to
    the last instruction (the final ALLOW)."""
    end = len(body) - 1
    out = []
    for pc, item in enumerate(body):
        if item in _RETURNS:
            out.append(_insn(_RET, 0, 0, _RETURNS[item]))
            continue
        code, jt, jf, k = item
        if jt == ("ALLOW",):
            jt = end - pc - 1
            if jt > 255:
                raise AssertionError("jump too far")
        out.append(_insn(code, jt, jf, k))
    return b"".join(out)


def program_fd(arch: str | None = None, fake_flock: bool = False) -> int:
    """A fresh file descriptor, positioned at the start, holding the filter (for one bwrap, or
    one isolate box's init)."""
    fd = os.memfd_create("sandboxd-seccomp", os.MFD_CLOEXEC)
    if fd < 16:
        # Never the number it gets in the child: dup2 onto itself would keep CLOEXEC.
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 16)
        os.close(fd)
        fd = high
    try:
        data = program(arch, fake_flock)
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
