// Memory spread over processes: four copies of itself take 40 MiB each, none of them big.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"time"
)

func main() {
	if os.Getenv("MEMORY_CHILD") != "" {
		b := make([]byte, 40<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		time.Sleep(time.Hour)
		fmt.Println(b[0])
		return
	}
	fmt.Println("start")
	self, _ := os.Executable()
	for i := 0; i < 4; i++ {
		cmd := exec.Command(self)
		cmd.Env = []string{"MEMORY_CHILD=1"}
		if err := cmd.Start(); err != nil {
			fmt.Println("start failed:", err)
		}
	}
	time.Sleep(time.Hour)
}
