// Creates empty files until it cannot: tmpfs inodes are kernel memory, so they are bounded.
package main

import (
	"fmt"
	"os"
	"strconv"
)

func main() {
	fmt.Println("start")
	for _, dir := range []string{"/tmp", "/dev/shm", "/box"} {
		n := 0
		for ; n < 3000000; n++ {
			f, err := os.Create(dir + "/f" + strconv.Itoa(n))
			if err != nil {
				fmt.Println(dir, n, err)
				break
			}
			f.Close()
		}
		fmt.Println(dir, "files", n)
	}
}
