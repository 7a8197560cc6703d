// Starts more processes than its limit allows, keeping each alive; reports the refusal.
package main

import (
	"fmt"
	"os"
	"os/exec"
)

func main() {
	for i := 0; i < 40; i++ {
		if err := exec.Command("/bin/sleep", "30").Start(); err != nil {
			fmt.Fprintln(os.Stderr, "process", i, "refused:", err)
			os.Exit(1)
		}
	}
	fmt.Println("all started")
}
