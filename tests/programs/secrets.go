// Looks for what a box must not see: the daemon's environment, its state, keys, host secrets.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	fmt.Println("start")
	for _, kv := range os.Environ() {
		fmt.Println("env", kv)
	}
	for _, p := range []string{"/etc/shadow", "/etc/passwd", "/root", "/root/.bashrc", "/var/lib/sandboxd",
		"{{STATE_DIR}}", "{{STATE_DIR}}/boxes", "{{KEY}}", "{{DIR}}", "/work", "/proc/kcore",
		"/sys/firmware", "/var/cache/sandboxd", "/home", "/run", "/etc/ssl/private"} {
		if b, err := os.ReadFile(p); err == nil {
			fmt.Printf("READ %s %q\n", p, b)
		}
		if es, err := os.ReadDir(p); err == nil && len(es) > 0 {
			fmt.Printf("LISTED %s %d\n", p, len(es))
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		for _, f := range []string{"environ", "cmdline"} {
			if b, err := os.ReadFile(p + "/" + f); err == nil {
				fmt.Printf("proc %s/%s %q\n", p, f, strings.ReplaceAll(string(b), "\x00", " "))
			}
		}
	}
	fmt.Println("processes", len(procs))
}
