// Adds a key {{MARKER}} to its user keyring, then looks for one left by an earlier request:
// request_key, and /proc/keys.
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"unsafe"
)

func main() {
	str := func(s string) uintptr {
		b, _ := syscall.BytePtrFromString(s)
		return uintptr(unsafe.Pointer(b))
	}
	payload := []byte("secret of an earlier request")
	_, _, e := syscall.Syscall6(sysAddKey, str("user"), str("{{MARKER}}"),
		uintptr(unsafe.Pointer(&payload[0])), uintptr(len(payload)),
		^uintptr(3) /* KEY_SPEC_USER_KEYRING */, 0)
	fmt.Printf("add_key %d\n", int(e))
	id, _, e := syscall.Syscall6(sysRequestKey, str("user"), str("{{MARKER}}"), 0, 0, 0, 0)
	fmt.Printf("request_key %d\n", int(e))
	n := -1
	if e == 0 {
		buf := make([]byte, 256)
		r, _, e2 := syscall.Syscall6(sysKeyctl, 11 /* KEYCTL_READ */, id,
			uintptr(unsafe.Pointer(&buf[0])), 256, 0, 0)
		if e2 == 0 {
			n = int(r)
		}
	}
	fmt.Printf("keyctl_read %d\n", n)
	keys, _ := os.ReadFile("/proc/keys")
	fmt.Printf("seen %d\n", strings.Count(string(keys), "{{MARKER}}"))
}
