// Allocates and touches memory until something stops it.
package main

import "fmt"

func main() {
	fmt.Println("start")
	var keep [][]byte
	for i := 1; ; i++ {
		b := make([]byte, 8<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		keep = append(keep, b)
		if i%4 == 0 {
			fmt.Println("MiB", i*8)
		}
	}
}
