// A benign program with 20 000 goroutines talking over channels.
package main

import (
	"fmt"
	"sync"
	"time"
)

func main() {
	const n = 20000
	var wg sync.WaitGroup
	results := make(chan int, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			time.Sleep(50 * time.Millisecond)
			results <- i % 7
		}(i)
	}
	wg.Wait()
	close(results)
	total := 0
	for r := range results {
		total += r
	}
	fmt.Println("goroutines", n, "sum", total)
}
