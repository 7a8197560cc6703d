"""The init of an isolate box: a tiny Go program that runs first in the box and installs
sandboxd's own seccomp filter (``sandboxd.sandbox.seccomp``) before it becomes the box's program.

Released isolate (2.6) installs only its own small filter (keyctl, AF_VSOCK, file locks,
io_uring); bubblewrap boxes get sandboxd's whole filter through ``bwrap --seccomp``.  So that
both drivers give the same guarantees, the isolate driver starts every build and run as
``/proc/self/fd/INIT_FD PROGRAM ARGS...`` (``isolate --inherit-fds``): the init reads the filter
the daemon wrote to ``SECCOMP_FD``, marks every descriptor above 2 close-on-exec, sets
``PR_SET_NO_NEW_PRIVS``, installs the filter on all its threads, reports ``sandboxd-init:
ready`` on ``STATUS_FD`` (close-on-exec too) and ``execve``s the program: the program is the
same process, so isolate's ``--time``, exit codes, signals and meta file see it as before.  If
anything fails it reports the reason on ``STATUS_FD`` and exits 127 without starting the program;
the driver then reports a failure of the sandbox, never one of the program.

It is built from the source below by the daemon's own Go toolchain when the toolchain is
warmed (``sandboxd.golang.toolchain.warm``), on the host, into a private build cache (the shared
standard-library cache is never written), and kept as ``init-<hash>`` in the cache directory
(root-owned, mode 0755).  The box reaches it only through the descriptor the daemon opened: no
host path names it inside the box.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

READY = b"sandboxd-init: ready"
FAILED_PREFIX = b"sandboxd-init: "

SOURCE = r"""// sandboxd's init for isolate boxes (see sandboxd/sandbox/boxinit.py).
package main

import (
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

const (
	statusFD = 3
	filterFD = 4

	prSetNoNewPrivs     = 38
	seccompSetModeFilter = 1
	seccompFlagTsync    = 1
	sysCloseRange       = 436
	closeRangeCloexec   = 4
)

var sysSeccomp = map[string]uintptr{"amd64": 317, "arm64": 277}[runtime.GOARCH]

func fail(what string, e syscall.Errno) {
	msg := "sandboxd-init: " + what
	if e != 0 {
		msg += ": " + e.Error()
	}
	syscall.Write(statusFD, []byte(msg+"\n"))
	syscall.Exit(127)
}

type sockFprog struct {
	len    uint16
	_      [6]byte
	filter uintptr
}

func main() {
	// prctl and seccomp on one thread; TSYNC then gives the filter to every thread.
	runtime.LockOSThread()
	if len(os.Args) < 2 || len(os.Args[1]) == 0 || os.Args[1][0] != '/' {
		fail("no absolute program path", 0)
	}
	if sysSeccomp == 0 {
		fail("no seccomp for "+runtime.GOARCH, 0)
	}
	prog := make([]byte, 0, 8192)
	buf := make([]byte, 8192)
	for {
		n, err := syscall.Read(filterFD, buf)
		if err != nil {
			fail("reading the filter", err.(syscall.Errno))
		}
		if n == 0 {
			break
		}
		prog = append(prog, buf[:n]...)
		if len(prog) > 8*4096 {
			fail("filter too long", 0)
		}
	}
	if len(prog) == 0 || len(prog)%8 != 0 {
		fail("bad filter", 0)
	}
	syscall.Close(filterFD)
	// Nothing the daemon gave the box reaches the program (its own fd included).
	if _, _, e := syscall.RawSyscall(sysCloseRange, 3, ^uintptr(0)>>1, closeRangeCloexec); e != 0 {
		var lim syscall.Rlimit
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
		for fd := 3; fd < int(lim.Cur) && fd < 1<<16; fd++ {
			syscall.RawSyscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_SETFD, syscall.FD_CLOEXEC)
		}
	}
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PRCTL, prSetNoNewPrivs, 1, 0, 0, 0, 0); e != 0 {
		fail("PR_SET_NO_NEW_PRIVS", e)
	}
	fprog := sockFprog{len: uint16(len(prog) / 8), filter: uintptr(unsafe.Pointer(&prog[0]))}
	r, _, e := syscall.RawSyscall(sysSeccomp, seccompSetModeFilter, seccompFlagTsync,
		uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	if e != 0 {
		fail("seccomp", e)
	}
	if r != 0 {
		fail("seccomp: a thread could not take the filter", 0)
	}
	syscall.Write(statusFD, []byte("sandboxd-init: ready\n"))
	err := syscall.Exec(os.Args[1], os.Args[1:], syscall.Environ())
	fail("exec "+os.Args[1], err.(syscall.Errno))
}
"""


def ident() -> str:
    """Names this init's source: a changed source builds a new binary."""
    return hashlib.sha256(SOURCE.encode()).hexdigest()[:12]


def binary_path(cache_dir: Path, toolchain_ident: str) -> Path:
    return cache_dir / f"init-{toolchain_ident}-{ident()}"


def build(goroot: Path, target: Path) -> Path:
    """Compile the init with the Go at ``goroot`` into ``target`` (once; kept)."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="init-build-", dir=target.parent) as work:
        src = Path(work) / "src"
        src.mkdir()
        (src / "go.mod").write_text("module sandboxdinit\n\ngo 1.21\n")
        (src / "main.go").write_text(SOURCE)
        out = Path(work) / "init"
        env = {
            "PATH": f"{goroot}/bin:/usr/bin:/bin", "HOME": work, "GOROOT": str(goroot),
            "GOCACHE": f"{work}/cache", "GOPATH": f"{work}/gopath", "GOENV": "off",
            "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOSUMDB": "off",
            "GOTOOLCHAIN": "local", "GOTELEMETRY": "off", "CGO_ENABLED": "0",
            "XDG_CONFIG_HOME": f"{work}/config",
        }
        proc = subprocess.run(
            [str(goroot / "bin" / "go"), "build", "-trimpath", "-ldflags=-s -w", "-o",
             str(out), "."], cwd=src, env=env, capture_output=True, text=True, timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"building the isolate box init failed:\n{proc.stderr}")
        os.chmod(out, 0o755)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(out, partial)
        os.chmod(partial, 0o755)
        os.rename(partial, target)
    return target
