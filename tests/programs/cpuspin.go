// Spins on every core.
package main

import "fmt"

func main() {
	fmt.Println("start")
	for i := 0; i < 3; i++ {
		go func() {
			for {
			}
		}()
	}
	for {
	}
}
