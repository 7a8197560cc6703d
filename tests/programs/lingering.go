// Leaves behind a detached process that holds none of the request's descriptors but a large
// touched heap: once killed it takes a while to end (its memory is freed first), after every
// pipe of the request is closed.  Then exits at once.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "linger" {
		heap := make([]byte, {{HEAP_MB}}<<20)
		for i := 0; i < len(heap); i += 4096 {
			heap[i] = 1
		}
		os.NewFile(3, "ready").Close()
		for {
			time.Sleep(time.Second)
			heap[0]++
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Println("pipe failed:", err)
		return
	}
	c := exec.Command("/proc/self/exe", "linger")
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	c.ExtraFiles = []*os.File{w}
	if err := c.Start(); err != nil {
		fmt.Println("start failed:", err)
		return
	}
	w.Close()
	r.Read(make([]byte, 1)) // end-of-file once its heap is touched
	fmt.Println("left", c.Process.Pid)
}
