"""The seccomp filter, run through a small classic-BPF interpreter for both architectures
(only x86_64 can be tried for real here; tests/system/test_hostile.py does that)."""

from __future__ import annotations

import errno
import struct

import pytest

from sandboxd.sandbox import seccomp

ALLOW = seccomp.RET_ALLOW
EPERM = seccomp.RET_ERRNO | errno.EPERM
ENOSYS = seccomp.RET_ERRNO | errno.ENOSYS


def run_filter(program: bytes, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """What the kernel would return for one system call (the subset of cBPF the filter uses)."""
    args = (*args, 0, 0, 0, 0, 0, 0)[:6]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args)
    insns = [struct.unpack("<HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    for _ in range(len(insns) + 1):
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == 0x06:
            return k
        elif code in (0x15, 0x35, 0x45):
            hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if hit else jf)
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
    raise AssertionError("the filter did not return")


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_filter_decisions(arch: str):
    program = seccomp.program(arch)
    audit = seccomp.AUDIT_ARCH[arch]
    table = seccomp.SYSCALLS[arch]
    assert len(program) % 8 == 0 and len(program) // 8 < 4096
    for name in seccomp.DENIED:
        assert run_filter(program, audit, table[name]) == EPERM, name
    assert run_filter(program, audit, table["clone3"]) == ENOSYS
    # clone: threads and fork are fine, a new namespace is not.
    thread = 0x00010000 | 0x00000100 | 0x00000200 | 0x00000400 | 0x00000800 | 0x00080000
    assert run_filter(program, audit, table["clone"], (thread,)) == ALLOW
    assert run_filter(program, audit, table["clone"], (17,)) == ALLOW  # fork: SIGCHLD
    for flag in (0x10000000, 0x20000000, 0x40000000, 0x00020000):
        assert run_filter(program, audit, table["clone"], (17 | flag,)) == EPERM, hex(flag)
    # Everyday calls (read, write, openat, mmap, futex, exit_group) pass.
    everyday = {"x86_64": (0, 1, 257, 9, 202, 231), "aarch64": (63, 64, 56, 222, 98, 94)}
    for nr in everyday[arch]:
        assert run_filter(program, audit, nr) == ALLOW, nr
    # Another architecture's calls (i386 on x86_64, arm on aarch64) are refused outright.
    if arch == "x86_64":
        for name in seccomp.X86_ONLY:
            assert run_filter(program, audit, table[name]) == EPERM, name
    assert run_filter(program, 0x40000003, 0) == EPERM
    assert run_filter(program, 0x40000028, 0) == EPERM


def test_x32_calls_are_refused():
    program = seccomp.program("x86_64")
    assert run_filter(program, seccomp.AUDIT_ARCH["x86_64"], 0x40000000 | 0) == EPERM


def test_unknown_architecture():
    with pytest.raises(seccomp.UnsupportedArch):
        seccomp.program("riscv64")


EAFNOSUPPORT = seccomp.RET_ERRNO | errno.EAFNOSUPPORT
EPROTONOSUPPORT = seccomp.RET_ERRNO | errno.EPROTONOSUPPORT


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_socket_families(arch: str):
    """Only the families of the box's own network namespace; netlink only for routes."""
    program = seccomp.program(arch)
    audit = seccomp.AUDIT_ARCH[arch]
    table = seccomp.SYSCALLS[arch]
    for call in ("socket", "socketpair"):
        nr = table[call]
        for family in (1, 2, 10):  # AF_UNIX, AF_INET, AF_INET6, any type and protocol
            assert run_filter(program, audit, nr, (family, 1, 0)) == ALLOW, (call, family)
            assert run_filter(program, audit, nr, (family, 2, 17)) == ALLOW, (call, family)
        assert run_filter(program, audit, nr, (16, 3, 0)) == ALLOW  # NETLINK_ROUTE
        for proto in (4, 9, 12, 15, 16, 21):  # sock_diag, audit, netfilter, uevent, generic
            assert run_filter(program, audit, nr, (16, 3, proto)) == EPROTONOSUPPORT, proto
        # AF_VSOCK, AF_PACKET, AF_ALG, AF_KEY, AF_BLUETOOTH, AF_CAN, AF_TIPC, AF_RDS, ...
        for family in (0, 3, 4, 5, 15, 17, 21, 29, 30, 31, 38, 40, 44, 45, 46, 255):
            assert run_filter(program, audit, nr, (family, 1, 0)) == EAFNOSUPPORT, family
        # Only the low 32 bits are the family (the kernel's int): high bits change nothing.
        assert run_filter(program, audit, nr, ((1 << 32) | 40, 1, 0)) == EAFNOSUPPORT
        assert run_filter(program, audit, nr, ((1 << 32) | 1, 1, 0)) == ALLOW


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_terminal_ioctls_and_flock(arch: str):
    audit = seccomp.AUDIT_ARCH[arch]
    table = seccomp.SYSCALLS[arch]
    program = seccomp.program(arch)
    assert run_filter(program, audit, table["ioctl"], (0, 0x5412)) == EPERM  # TIOCSTI
    assert run_filter(program, audit, table["ioctl"], (0, 0x541C)) == EPERM  # TIOCLINUX
    assert run_filter(program, audit, table["ioctl"], (0, 0x5401)) == ALLOW  # TCGETS
    assert run_filter(program, audit, table["flock"], (3, 2)) == ALLOW
    faked = seccomp.program(arch, fake_flock=True)
    assert run_filter(faked, audit, table["flock"], (3, 2)) == seccomp.RET_ERRNO
    # Everything else decides the same with and without it.
    for name in seccomp.DENIED:
        assert run_filter(faked, audit, table[name]) == EPERM, name
    assert run_filter(faked, audit, table["socket"], (40, 1, 0)) == EAFNOSUPPORT
