// Asks the kernel for what only a privileged process may do; prints the errno of each.
package main

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

func errno(r1 uintptr, e syscall.Errno) int {
	if e != 0 {
		return int(e)
	}
	return 0
}

func main() {
	fmt.Println("start")
	str := func(s string) uintptr {
		b, _ := syscall.BytePtrFromString(s)
		return uintptr(unsafe.Pointer(b))
	}
	buf := make([]byte, 4096)
	bp := uintptr(unsafe.Pointer(&buf[0]))
	report := func(name string, r1 uintptr, e syscall.Errno) {
		fmt.Printf("%s %d\n", name, errno(r1, e))
	}
	r, _, e := syscall.Syscall6(syscall.SYS_MOUNT, str("none"), str("/tmp"), str("tmpfs"), 0, 0, 0)
	report("mount", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_UMOUNT2, str("/proc"), 2, 0)
	report("umount2", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_PTRACE, syscall.PTRACE_ATTACH, 1, 0)
	report("ptrace", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_PTRACE, syscall.PTRACE_ATTACH, uintptr(os.Getppid()), 0)
	report("ptrace_parent", r, e)
	r, _, e = syscall.RawSyscall(syscall.SYS_SETUID, 0, 0, 0)
	report("setuid", r, e)
	r, _, e = syscall.RawSyscall(syscall.SYS_SETGID, 0, 0, 0)
	report("setgid", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_UNSHARE, syscall.CLONE_NEWUSER, 0, 0)
	report("unshare_user", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_UNSHARE, syscall.CLONE_NEWNS, 0, 0)
	report("unshare_mount", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_UNSHARE, syscall.CLONE_NEWNET, 0, 0)
	report("unshare_net", r, e)
	if f, err := os.Open("/proc/self/ns/net"); err == nil {
		r, _, e = syscall.Syscall(sysSetns, f.Fd(), 0, 0)
		report("setns", r, e)
	}
	r, _, e = syscall.Syscall6(sysKexecLoad, 0, 0, 0, 0, 0, 0)
	report("kexec_load", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_INIT_MODULE, bp, 16, str(""))
	report("init_module", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_DELETE_MODULE, str("ext4"), 0, 0)
	report("delete_module", r, e)
	// A wrong magic: EINVAL if the call were allowed, EPERM when refused.
	r, _, e = syscall.Syscall6(syscall.SYS_REBOOT, 1, 2, 3, 0, 0, 0)
	report("reboot", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_CHROOT, str("/tmp"), 0, 0)
	report("chroot", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_PIVOT_ROOT, str("/tmp"), str("/tmp"), 0)
	report("pivot_root", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_ACCT, str("/tmp/acct"), 0, 0)
	report("acct", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_SWAPON, str("/tmp/swap"), 0, 0)
	report("swapon", r, e)
	r, _, e = syscall.Syscall(sysBpf, 5 /* BPF_PROG_LOAD */, bp, 128)
	report("bpf", r, e)
	r, _, e = syscall.Syscall6(syscall.SYS_PERF_EVENT_OPEN, bp, 0, ^uintptr(0), ^uintptr(0), 0, 0)
	report("perf_event_open", r, e)
	r, _, e = syscall.Syscall(sysKeyctl, 0 /* KEYCTL_GET_KEYRING_ID */, ^uintptr(2) /* -3 */, 0)
	report("keyctl", r, e)
	r, _, e = syscall.Syscall6(sysAddKey, str("user"), str("sandboxd-probe"), bp, 4,
		^uintptr(3) /* KEY_SPEC_USER_KEYRING */, 0)
	report("add_key", r, e)
	r, _, e = syscall.Syscall6(sysRequestKey, str("user"), str("sandboxd-probe"), 0, 0, 0, 0)
	report("request_key", r, e)
	r, _, e = syscall.Syscall6(sysNameToHandleAt, ^uintptr(99), str("/"), bp, bp+64, 0, 0)
	report("name_to_handle_at", r, e)
	// A zeroed struct clone_args of size 88 (CLONE_ARGS_SIZE_VER2): EINVAL if not refused.
	r, _, e = syscall.RawSyscall(sysClone3, bp+2048, 88, 0)
	if e == 0 && r == 0 {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	}
	report("clone3", r, e)
	r, _, e = syscall.Syscall(sysInotifyInit1, 0, 0, 0)
	report("inotify_init1", r, e)
	// FAN_CLASS_NOTIF | FAN_REPORT_FID: what an unprivileged process may ask for.
	r, _, e = syscall.Syscall(sysFanotifyInit, 0x200, 0, 0)
	report("fanotify_init", r, e)
	r, _, e = syscall.Syscall(sysUserfaultfd, 0, 0, 0)
	report("userfaultfd", r, e)
	r, _, e = syscall.Syscall(sysIoUringSetup, 4, bp, 0)
	report("io_uring_setup", r, e)
	// Read 8 bytes of pid 1 (not our child): EFAULT or success would mean the access check
	// passed.
	iov := [2]syscall.Iovec{{Base: &buf[1024], Len: 8}, {Base: &buf[2048], Len: 8}}
	r, _, e = syscall.Syscall6(sysProcessVmReadv, 1, uintptr(unsafe.Pointer(&iov[0])), 1,
		uintptr(unsafe.Pointer(&iov[1])), 1, 0)
	report("process_vm_readv", r, e)
	r, _, e = syscall.Syscall(syscall.SYS_SYSLOG, 10 /* SIZE_BUFFER */, 0, 0)
	report("syslog", r, e)
	r, _, e = syscall.Syscall6(sysOpenByHandleAt, ^uintptr(99) /* AT_FDCWD */, bp, 0, 0, 0, 0)
	report("open_by_handle_at", r, e)
	// clone with a new network namespace: the child (if any) leaves at once.
	r, _, e = syscall.RawSyscall6(syscall.SYS_CLONE, syscall.CLONE_NEWNET|uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if e == 0 && r == 0 {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	}
	if e == 0 {
		var ws syscall.WaitStatus
		syscall.Wait4(int(r), &ws, 0, nil)
	}
	report("clone_newnet", r, e)
	fmt.Println("end")
}
