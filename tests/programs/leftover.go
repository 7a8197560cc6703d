// Leaves processes behind: a setsid child that ignores SIGTERM, a double-forked one, and one
// holding stdout open; then exits at once.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

func main() {
	a := exec.Command("/bin/sh", "-c", "trap '' TERM HUP INT; while :; do sleep 1; done")
	a.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	a.Stdout = os.Stdout
	if err := a.Start(); err != nil {
		fmt.Println("start failed:", err)
	}
	b := exec.Command("/bin/sh", "-c", "(trap '' TERM; exec sleep 1000) & (sleep 1000 &) ; exit 0")
	if err := b.Run(); err != nil {
		fmt.Println("double fork failed:", err)
	}
	fmt.Println("left", a.Process.Pid)
}
