// gocacheprog is the GOCACHEPROG of every sandboxd build (see sandboxd/cacheprog.py).
//
// Usage: gocacheprog SHARED PRIVATE
//
// SHARED is the read-only standard-library build cache (a GOCACHE directory the daemon warmed);
// PRIVATE is a directory of the build's own, writable, gone when the build ends. "get" answers
// from PRIVATE, then from SHARED (DiskPath is the shared file itself: nothing is copied); "put"
// writes into PRIVATE. So a build that misses the shared cache compiles what it misses and
// keeps it for its own later steps, and no build can change what the next one reads.
//
// It runs inside the build's sandbox, as the build's user, started by the go command; it reads
// and writes nothing else. Entries use the go command's own on-disk format (cmd/go/internal/
// cache: "<dir>/<xx>/<id>-a" index lines, "<dir>/<xx>/<output id>-d" bodies).
package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

type request struct {
	ID       int64
	Command  string
	ActionID []byte `json:",omitempty"`
	OutputID []byte `json:",omitempty"`
	BodySize int64  `json:",omitempty"`
}

type response struct {
	ID            int64
	Err           string     `json:",omitempty"`
	KnownCommands []string   `json:",omitempty"`
	Miss          bool       `json:",omitempty"`
	OutputID      []byte     `json:",omitempty"`
	Size          int64      `json:",omitempty"`
	Time          *time.Time `json:",omitempty"`
	DiskPath      string     `json:",omitempty"`
}

const hexSize = 64 // a SHA-256 in hex

var shared, private string

func file(dir string, id []byte, kind string) string {
	name := hex.EncodeToString(id)
	return filepath.Join(dir, name[:2], name+"-"+kind)
}

// lookup reads one index entry: "v1 <action> <output> <size, 20 wide> <time ns, 20 wide>\n".
func lookup(dir string, action []byte) (*response, bool) {
	data, err := os.ReadFile(file(dir, action, "a"))
	if err != nil {
		return nil, false
	}
	fields := strings.Fields(string(data))
	if len(fields) != 5 || fields[0] != "v1" || len(fields[2]) != hexSize ||
		fields[1] != hex.EncodeToString(action) {
		return nil, false
	}
	out, err1 := hex.DecodeString(fields[2])
	size, err2 := strconv.ParseInt(fields[3], 10, 64)
	ns, err3 := strconv.ParseInt(fields[4], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || size < 0 {
		return nil, false
	}
	body := file(dir, out, "d")
	if st, err := os.Stat(body); err != nil || st.Size() != size {
		return nil, false
	}
	t := time.Unix(0, ns)
	return &response{OutputID: out, Size: size, Time: &t, DiskPath: body}, true
}

func get(req *request) *response {
	for _, dir := range []string{private, shared} {
		if res, ok := lookup(dir, req.ActionID); ok {
			return res
		}
	}
	return &response{Miss: true}
}

func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func put(req *request, body []byte) *response {
	if int64(len(body)) != req.BodySize {
		return &response{Err: fmt.Sprintf("put: body of %d bytes, %d announced", len(body), req.BodySize)}
	}
	if len(req.ActionID) != hexSize/2 || len(req.OutputID) != hexSize/2 {
		return &response{Err: "put: bad action or output id"}
	}
	path := file(private, req.OutputID, "d")
	if err := writeFile(path, body); err != nil {
		return &response{Err: err.Error()}
	}
	entry := fmt.Sprintf("v1 %x %x %20d %20d\n", req.ActionID, req.OutputID, len(body), time.Now().UnixNano())
	if err := writeFile(file(private, req.ActionID, "a"), []byte(entry)); err != nil {
		return &response{Err: err.Error()}
	}
	return &response{DiskPath: path}
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gocacheprog SHARED PRIVATE")
		os.Exit(2)
	}
	shared, private = os.Args[1], os.Args[2]
	if err := os.MkdirAll(private, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "gocacheprog:", err)
		os.Exit(1)
	}
	in := json.NewDecoder(bufio.NewReaderSize(os.Stdin, 1<<16))
	w := bufio.NewWriter(os.Stdout)
	out := json.NewEncoder(w)
	send := func(res *response) {
		if err := out.Encode(res); err != nil {
			os.Exit(1)
		}
		if err := w.Flush(); err != nil {
			os.Exit(1)
		}
	}
	send(&response{KnownCommands: []string{"get", "put", "close"}})
	for {
		var req request
		if err := in.Decode(&req); err != nil {
			if err == io.EOF {
				return
			}
			fmt.Fprintln(os.Stderr, "gocacheprog: reading a request:", err)
			os.Exit(1)
		}
		var res *response
		switch req.Command {
		case "get":
			res = get(&req)
		case "put":
			var body []byte // a base64 JSON string follows a put with a body
			if req.BodySize > 0 {
				if err := in.Decode(&body); err != nil {
					fmt.Fprintln(os.Stderr, "gocacheprog: reading a body:", err)
					os.Exit(1)
				}
			}
			res = put(&req, body)
		case "close":
			res = &response{}
			res.ID = req.ID
			send(res)
			return
		default:
			res = &response{Err: "unknown command " + strconv.Quote(req.Command)}
		}
		res.ID = req.ID
		send(res)
	}
}
