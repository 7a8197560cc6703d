// Plants links and odd files in its box, pointing at what the host must never touch.
package main

import (
	"fmt"
	"os"
	"syscall"
)

func main() {
	links := map[string]string{
		"/box/x":             "/etc/shadow",
		"/box/d":             "{{VICTIM_DIR}}",
		"/box/main":          "{{VICTIM_FILE}}",
		"/box/out":           "/etc",
		"/box/src":           "{{VICTIM_DIR}}",
		"/box/main.go":       "/etc/passwd",
		"/box/go.mod":        "{{VICTIM_FILE}}",
		"/box/deep/a/b/link": "{{VICTIM_DIR}}",
		"/box/state":         "{{STATE_DIR}}",
		"/tmp/x":             "{{VICTIM_DIR}}",
	}
	os.MkdirAll("/box/deep/a/b", 0o755)
	for name, target := range links {
		if err := os.Symlink(target, name); err != nil {
			fmt.Println("symlink", name, err)
		}
	}
	if err := syscall.Mkfifo("/box/fifo", 0o666); err != nil {
		fmt.Println("mkfifo", err)
	}
	os.WriteFile("/box/plain", []byte("mine"), 0o600)
	if err := os.Link("/box/plain", "/box/hard"); err != nil {
		fmt.Println("link", err)
	}
	os.Chmod("/box", 0o777)
	fmt.Println("planted")
}
