// Mode "write": leaves a marker in every writable place, listens on an abstract Unix socket
// and on loopback TCP, and waits; mode "look": lists every place and tries to connect.
package main

import (
	"fmt"
	"net"
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
		u, err := net.Listen("unix", "@"+marker)
		if err != nil {
			fmt.Println("listen unix", err)
		} else {
			defer u.Close()
		}
		t, err := net.Listen("tcp", "127.0.0.1:47123")
		if err != nil {
			fmt.Println("listen tcp", err)
		} else {
			defer t.Close()
		}
		fmt.Println("written")
		time.Sleep(1500 * time.Millisecond)
		return
	}
	for _, target := range [][2]string{{"unix", "@" + marker}, {"tcp", "127.0.0.1:47123"}} {
		if c, err := net.DialTimeout(target[0], target[1], 500*time.Millisecond); err == nil {
			c.Close()
			fmt.Println("reached", target[0], marker)
		}
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
