// Output that is not text: invalid UTF-8, NUL, CR, a split character, a megabyte-long line.
package main

import (
	"os"
	"strings"
)

func main() {
	os.Stdout.Write([]byte("ok\xff\xfe\x00mid\r\n"))
	os.Stderr.Write([]byte("err\xc3\x28\x00\r"))
	os.Stdout.Write([]byte(strings.Repeat("a", 1<<20) + "\xe2\x82"))
	os.Stdout.Write([]byte("\xac end\n"))
	os.Stdout.Write([]byte("tail\xf0\x9f"))
}
