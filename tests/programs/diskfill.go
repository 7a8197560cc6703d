// Writes files until the writes fail, in every writable place; reports how far each got.
package main

import (
	"fmt"
	"os"
)

func fill(path string) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var n int64
	for n < 1<<30 {
		k, err := f.Write(buf)
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func main() {
	fmt.Println("start")
	failed := false
	for _, p := range []string{"/box/fill", "/tmp/fill", "/dev/shm/fill", "/var/tmp/fill2"} {
		n, err := fill(p)
		fmt.Printf("%s %d %v\n", p, n, err)
		failed = failed || err != nil
	}
	if failed {
		os.Exit(3)
	}
}
