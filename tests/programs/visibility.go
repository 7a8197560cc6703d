// Mode "write": leaves a marker in every writable place and waits; mode "look": lists them all.
package main

import (
	"fmt"
	"os"
	"strings"
	"time"
)

var places = []string{"/box", "/tmp", "/dev/shm", "/var/tmp"}

func main() {
	mode, marker := "{{MODE}}", "{{MARKER}}"
	if mode == "write" {
		for _, p := range places {
			if err := os.WriteFile(p+"/"+marker+"-"+strings.ReplaceAll(p, "/", "_"), []byte(marker), 0o666); err != nil {
				fmt.Println("write", p, err)
			}
		}
		fmt.Println("written")
		time.Sleep(1500 * time.Millisecond)
		return
	}
	fmt.Println("start")
	for _, p := range places {
		es, _ := os.ReadDir(p)
		for _, e := range es {
			fmt.Println("seen", p+"/"+e.Name())
		}
	}
	fmt.Println("looked")
}
