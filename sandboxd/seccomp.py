"""A seccomp filter for bubblewrap boxes: the kernel's attack surface a Go program never needs.

bwrap already drops every capability, so most of these calls would fail with EPERM anyway; the
filter makes that hold even where the kernel has a bug behind the capability check (user
namespaces, io_uring, bpf and userfaultfd are where sandbox escapes have come from).  It is a
classic-BPF program, written here with ``struct`` so no libseccomp binding is needed, and handed
to ``bwrap --seccomp FD``.  Denied calls return EPERM; ``clone3`` returns ENOSYS (its flags sit
behind a pointer the filter cannot read), so libc and Go fall back to ``clone``, whose flags the
filter checks for new namespaces.  Calls of another architecture (i386 or x32 on x86_64) are
refused outright, so they cannot be used to get round the numbers below.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import struct

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
_NR, _ARCH, _ARG0_LOW = 0, 4, 16

_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000

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
        # x86_64 only
        "iopl": 172, "ioperm": 173, "uselib": 134,
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
        "quotactl_fd": 443,
    },
}
X86_ONLY = ("iopl", "ioperm", "uselib")


class UnsupportedArch(RuntimeError):
    """No filter is known for this machine's architecture."""


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def program(arch: str | None = None) -> bytes:
    """The compiled filter (an array of ``struct sock_filter``) for ``arch``."""
    arch = arch or platform.machine()
    if arch not in SYSCALLS:
        raise UnsupportedArch(f"no seccomp filter for {arch}")
    table = SYSCALLS[arch]
    denied = [table[name] for name in (*DENIED, *(X86_ONLY if arch == "x86_64" else ()))]
    eperm = RET_ERRNO | errno.EPERM
    enosys = RET_ERRNO | errno.ENOSYS
    # Layout: checks jump forward to one of the three returns at the end.
    body: list[tuple[int, int, int, int]] = []
    body.append((_LD_ABS, 0, 0, _ARCH))
    body.append((_JEQ, 1, 0, AUDIT_ARCH[arch]))
    body.append(("DENY",))  # type: ignore[arg-type]
    body.append((_LD_ABS, 0, 0, _NR))
    if arch == "x86_64":
        body.append((_JGE, 0, 1, X32_SYSCALL_BIT))
        body.append(("DENY",))  # type: ignore[arg-type]
    for nr in denied:
        body.append((_JEQ, 0, 1, nr))
        body.append(("DENY",))  # type: ignore[arg-type]
    body.append((_JEQ, 0, 1, table["clone3"]))
    body.append(("NOSYS",))  # type: ignore[arg-type]
    body.append((_JEQ, 0, 3, table["clone"]))
    body.append((_LD_ABS, 0, 0, _ARG0_LOW))
    body.append((_JSET, 0, 1, CLONE_NAMESPACES))
    body.append(("DENY",))  # type: ignore[arg-type]
    body.append((_RET, 0, 0, RET_ALLOW))
    out = []
    for item in body:
        if item == ("DENY",):
            out.append(_insn(_RET, 0, 0, eperm))
        elif item == ("NOSYS",):
            out.append(_insn(_RET, 0, 0, enosys))
        else:
            out.append(_insn(*item))
    return b"".join(out)


def program_fd(arch: str | None = None) -> int:
    """A fresh file descriptor, positioned at the start, holding the filter (for one bwrap)."""
    fd = os.memfd_create("sandboxd-seccomp", os.MFD_CLOEXEC)
    if fd < 16:
        # Never the number it gets in the child: dup2 onto itself would keep CLOEXEC.
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 16)
        os.close(fd)
        fd = high
    try:
        data = program(arch)
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
