// Prints, then sleeps far past any wall-time limit.
package main

import (
	"fmt"
	"time"
)

func main() {
	fmt.Println("start")
	time.Sleep(time.Hour)
}
