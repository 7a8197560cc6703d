// Sends SIGKILL to every process it can name; then says it survived.
package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

func main() {
	fmt.Println("start")
	time.Sleep(300 * time.Millisecond)
	err := syscall.Kill(-1, syscall.SIGKILL)
	fmt.Println("kill -1:", err)
	// Every process it can see (thread ids are left out: they would be itself).
	hit := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err == nil && pid != os.Getpid() && syscall.Kill(pid, syscall.SIGKILL) == nil {
			hit++
		}
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGSTOP} {
		syscall.Kill(-1, sig)
	}
	fmt.Println("survived, signalled", hit)
}
