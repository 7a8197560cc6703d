// Tries to reach the host and the world: TCP to the host's loopback, a public address, DNS.
package main

import (
	"fmt"
	"net"
	"time"
)

func main() {
	fmt.Println("start")
	for _, addr := range []string{"127.0.0.1:{{PORT}}", "1.1.1.1:53", "8.8.8.8:443", "[::1]:{{PORT}}"} {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if c != nil {
			c.Close()
		}
		fmt.Printf("dial %s failed=%v\n", addr, err != nil)
	}
	u, err := net.DialTimeout("unix", "{{SOCKET}}", time.Second)
	if u != nil {
		u.Close()
	}
	fmt.Printf("dial unix failed=%v\n", err != nil)
	addrs, err := net.LookupHost("example.com")
	fmt.Printf("dns failed=%v %v\n", err != nil, addrs)
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if i.Name != "lo" {
			fmt.Println("interface", i.Name)
		}
	}
}
