// One line, then output without end.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

func main() {
	fmt.Println("first line")
	w := bufio.NewWriterSize(os.Stdout, 65536)
	line := strings.Repeat("x", 99) + "\n"
	for {
		w.WriteString(line)
	}
}
