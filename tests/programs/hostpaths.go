// Prints everything a box can read about where it lives: mount tables, every process's command
// line, environment, cgroups and links, its own descriptors, the environment, error texts.
// The test looks for the daemon's host paths in it.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
)

func dump(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Printf("== %s: %v\n", path, err)
		return
	}
	fmt.Printf("== %s\n%s\n", path, strings.ReplaceAll(string(data), "\x00", " "))
}

func link(path string) {
	target, err := os.Readlink(path)
	if err != nil {
		fmt.Printf("== link %s: %v\n", path, err)
		return
	}
	fmt.Printf("== link %s -> %s\n", path, target)
}

func main() {
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range append([]string{"/proc/self", "/proc/thread-self"}, pids...) {
		for _, name := range []string{"cmdline", "environ", "cgroup", "mountinfo", "mounts",
			"mountstats", "maps", "stat", "status", "comm", "cpuset", "sched", "attr/current",
			"net/unix", "loginuid", "sessionid", "timers", "personality", "wchan"} {
			dump(p + "/" + name)
		}
		for _, name := range []string{"exe", "cwd", "root"} {
			link(p + "/" + name)
		}
		fds, _ := filepath.Glob(p + "/fd/*")
		for _, fd := range fds {
			link(fd)
			dump(fd)
		}
		fdinfos, _ := filepath.Glob(p + "/fdinfo/*")
		for _, fd := range fdinfos {
			dump(fd)
		}
		maps, _ := filepath.Glob(p + "/map_files/*")
		for _, m := range maps {
			link(m)
		}
	}
	for _, name := range []string{"/proc/mounts", "/proc/cgroups", "/proc/swaps", "/proc/locks",
		"/proc/filesystems", "/proc/keys", "/proc/key-users", "/proc/net/unix", "/proc/cmdline",
		"/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/proc/sysvipc/shm",
		"/proc/sys/fs/binfmt_misc/status", "/etc/mtab", "/etc/hostname", "/etc/hosts",
		"/etc/passwd", "/etc/resolv.conf"} {
		dump(name)
	}
	fmt.Println("== environment")
	for _, e := range os.Environ() {
		fmt.Println(e)
	}
	exe, err := os.Executable()
	fmt.Println("== executable", exe, err)
	wd, err := os.Getwd()
	fmt.Println("== cwd", wd, err)
	home, err := os.UserHomeDir()
	fmt.Println("== home", home, err)
	cache, err := os.UserCacheDir()
	fmt.Println("== cache", cache, err)
	fmt.Println("== tempdir", os.TempDir())
	fmt.Println("== goroot", runtime.GOROOT())
	if info, ok := debug.ReadBuildInfo(); ok {
		fmt.Println("== buildinfo\n" + info.String())
	}
	// Every name reachable from / (the box's whole tree), without /proc and /sys.
	fmt.Println("== tree")
	filepath.WalkDir("/", func(path string, d os.DirEntry, err error) error {
		switch path {
		case "/proc", "/sys", "/usr", "/dev", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin":
			fmt.Println(path)
			return filepath.SkipDir
		}
		if d != nil && d.Type()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(path)
			fmt.Println(path, "->", target)
			return nil
		}
		fmt.Println(path)
		return nil
	})
	fmt.Println("== stack")
	fmt.Println(string(debug.Stack()))
	fmt.Println("== end")
}
