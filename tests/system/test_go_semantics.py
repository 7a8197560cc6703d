"""Programs that run on go.dev/play run here the same way (issue 10, defects 1-4): a package that
is not main, a go.mod without a go line, a build that misses the shared cache, test names as go
test has them, localhost inside the box.  Real Go in real boxes through a real daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from sandboxd.golang import toolchain
from sandboxd.jobs.bincache import BinaryCache
from sandboxd.limits import DEFAULT_LIMITS
from tests.harness import Daemon, finals, go_main, output
from tests.system.test_modules import make_proxy

LIB = "package lib\n\nfunc F() int { return 1 }\n"

# The Go Playground's own multi-file example: its go.mod has no go line.
PLAYGROUND_MULTI = """package main

import (
\t"fmt"

\t"play.ground/foo"
)

func main() {
\tfmt.Println(foo.Bar)
}
-- go.mod --
module play.ground
-- foo/foo.go --
package foo

const Bar = "The Go Gopher"
"""

# The Go Playground's stock HTTP server example, and what the box's /etc says.
HTTP_SERVER = """package main

import (
\t"fmt"
\t"io"
\t"log"
\t"net"
\t"net/http"
\t"os"
\t"os/user"
\t"strings"
)

func main() {
\thttp.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
\t\tfmt.Fprint(w, "Hello, playground")
\t})
\tl, err := net.Listen("tcp", "localhost:8080")
\tif err != nil {
\t\tlog.Fatal(err)
\t}
\tgo func() { log.Fatal(http.Serve(l, nil)) }()
\tresp, err := http.Get("http://localhost:8080/hello")
\tif err != nil {
\t\tlog.Fatal(err)
\t}
\tio.Copy(os.Stdout, resp.Body)
\tfmt.Println()
\tfor _, host := range []string{"localhost", "ip6-localhost"} {
\t\taddrs, err := net.LookupHost(host)
\t\tfmt.Println(host, addrs, err)
\t}
\tu, err := user.Current()
\tfmt.Println(u.Username, u.Uid == fmt.Sprint(os.Getuid()), u.HomeDir, err)
\tif _, err := os.Stat("/etc/hostname"); err == nil {
\t\tfmt.Println("the host's /etc is visible")
\t}
\tif err := os.WriteFile("/etc/hosts", []byte("x"), 0o644); err == nil {
\t\tfmt.Println("/etc is writable")
\t}
\tif b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
\t\tfor _, line := range strings.Split(string(b), "\\n") {
\t\t\tif f := strings.Fields(line); len(f) > 4 && f[4] == "/etc" {
\t\t\t\tfmt.Println("/etc is", f[3], "of its filesystem")
\t\t\t}
\t\t}
\t}
\tif c, err := net.Dial("tcp", "1.1.1.1:80"); err == nil {
\t\tc.Close()
\t\tfmt.Println("a way out")
\t}
}
"""


def test_a_package_that_is_not_main_is_a_compile_error_as_go_run_says(daemon):
    """Defect 1: `package lib` used to build an archive that the box handed to /bin/sh."""
    mod = {"main.go": LIB, "go.mod": "module example.com/lib\n\ngo 1.22\n"}
    events = daemon.run({"id": "lib", "code": LIB}, {"id": "again", "code": LIB},
                        {"id": "mod", "files": mod})
    done = finals(events)
    for rid, path in (("lib", "sandbox"), ("again", "sandbox"), ("mod", "example.com/lib")):
        assert done[rid]["status"] == "compile_error", done[rid]
        assert done[rid]["phase"] == "build" and done[rid]["cached"] is False
        assert output(events, rid) == f"package {path} is not a main package\n"
        assert done[rid]["message"] == f"package {path} is not a main package"


def test_nothing_but_a_program_of_this_machine_is_ever_executed(driver):
    """Whatever the binary cache holds, a file that is not an ELF executable of this machine
    is never run: here a shell script planted under the key of a program (the archive of a
    non-main package went to /bin/sh the same way)."""
    tc = toolchain.load(toolchain.find_goroot(None), toolchain.DEFAULT_CACHE_DIR)
    code = go_main('\tfmt.Println("built")')
    key = BinaryCache.key({"main.go": code.encode(), "go.mod": tc.go_mod()}, tc.ident,
                          toolchain.BUILD_FLAGS, DEFAULT_LIMITS.build)
    d = Daemon(driver)
    try:
        binaries = d.state_dir / "binaries"
        binaries.mkdir(parents=True)
        planted = binaries / key
        planted.write_text("echo the planted script ran\n")
        planted.chmod(0o555)
        d.start()
        events = d.run({"id": "s", "code": code})
    finally:
        d.cleanup()
    final = finals(events)["s"]
    assert final["status"] == "internal_error" and final["cached"] is True, final
    assert "cannot be run" in final["message"]
    assert output(events, "s") == ""


def test_a_go_mod_without_a_go_line_builds(daemon):
    """Defect 2: the Playground's multi-file example (`module play.ground`, no go line) failed
    with `go: updating go.mod: open go.mod: permission denied`."""
    events = daemon.run({"id": "m", "code": PLAYGROUND_MULTI},
                        {"id": "t", "files": {
                            "go.mod": "module play.ground\n",
                            "main.go": "package main\n\nimport \"testing\"\n\n"
                                       "func TestX(t *testing.T) {}\n"}})
    done = finals(events)
    assert done["m"]["status"] == "ok", output(events, "m")
    assert output(events, "m") == "The Go Gopher\n"
    assert done["t"]["status"] == "ok" and done["t"]["tests_passed"] == 1, output(events, "t")


@pytest.fixture(scope="module")
def cache_without_index(driver):
    """A daemon whose standard-library cache (a hard-linked copy) lacks every module index
    entry: each build misses them, and go must write them somewhere.  The copy has no cache
    layer either: the daemon's start compiles it."""
    real = toolchain.load(toolchain.find_goroot(None), toolchain.DEFAULT_CACHE_DIR)
    work = Path(tempfile.mkdtemp(prefix="test-miss-", dir=real.cache_dir))
    try:
        os.chmod(work, 0o755)
        cache_dir = work / "cache"
        cache_dir.mkdir(mode=0o755)
        std = cache_dir / real.std_cache.name
        for source, target in ((real.goroot, cache_dir / real.goroot.name),
                               (real.std_cache, std)):
            subprocess.run(["cp", "-al", str(source), str(target)], check=True)
        index = []  # (entry, body) of every module index entry (several may share a body)
        for entry in std.glob("??/*-a"):
            output_id = entry.read_text().split()[2]
            body = std / output_id[:2] / f"{output_id}-d"
            with open(body, "rb") as f:
                if f.read(11) == b"go index v2":
                    index.append((entry, body))
        for entry, body in index:  # links of the copy: the real cache keeps its own
            entry.unlink()
            body.unlink(missing_ok=True)
        removed = len(index)
        assert removed > 100  # one per standard package at least
        shutil.rmtree(std / toolchain.CACHEPROG_DIR, ignore_errors=True)  # the start builds it
        d = Daemon(driver, f"--cache-dir={cache_dir}").start()
        layer = list((std / toolchain.CACHEPROG_DIR).iterdir())
        assert [p.name for p in layer] == [real.cacheprog_name]
        st = layer[0].stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o755)
        try:
            yield d
        finally:
            d.cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_build_that_misses_the_shared_cache_builds(cache_without_index):
    """Defect 2: a miss of the read-only shared cache was a wrong compile_error ("package fmt
    is not in std", "open /gocache/…-d: read-only file system"); it must only cost time."""
    code = go_main('\tfmt.Println(strings.ToUpper("missed"))', imports=("fmt", "strings"))
    events = cache_without_index.run({"id": "h", "code": code}, {"id": "v", "type": "vet",
                                                                 "code": code})
    done = finals(events)
    assert done["h"]["status"] == "ok", output(events, "h")
    assert output(events, "h") == "MISSED\n"
    assert done["v"]["status"] == "ok", output(events, "v")


def test_tests_of_a_module_without_a_go_line_through_a_goproxy(driver):
    """Defect 2 as first seen: with --goproxy, tests of a module whose go.mod has no go line."""
    root = Path(tempfile.mkdtemp(prefix="sandboxd-gosem-"))
    try:
        os.chmod(root, 0o755)
        proxy = make_proxy(root)
        d = Daemon(driver, f"--goproxy=file://{proxy}").start()
        try:
            events = d.run({"id": "t", "files": {
                "go.mod": "module example.com/use\n",
                "main_test.go": 'package main\n\nimport (\n\t"testing"\n\n\t"example.com/greet"'
                                '\n)\n\nfunc TestHi(t *testing.T) { greet.Hi("t") }\n'}})
        finally:
            d.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    final = finals(events)["t"]
    assert final["status"] == "ok" and final["tests_passed"] == 1, output(events, "t")
    assert "hi from a module, t" in output(events, "t")


def test_test_names_are_what_go_test_runs(daemon):
    """Defect 3: `TestÑIsATest`, `Test_x` and `Test` are tests (go's isTest); `Testify` is
    not, and benchmarks alone leave a program (the Playground's rule)."""
    tests = ('package main\n\nimport "testing"\n\nfunc TestÑIsATest(t *testing.T) {}\n\n'
             'func Test_x(t *testing.T) {}\n\nfunc Test(t *testing.T) {}\n\n'
             'func Testify(t *testing.T) { panic("not a test") }\n')
    bench = 'package main\n\nimport "testing"\n\nfunc BenchmarkX(b *testing.B) {}\n'
    events = daemon.run({"id": "t", "code": tests}, {"id": "b", "code": bench})
    done = finals(events)
    assert done["t"]["status"] == "ok", output(events, "t")
    assert done["t"]["tests_passed"] == 3
    text = output(events, "t")
    for name in ("TestÑIsATest", "Test_x", "Test "):
        assert f"--- PASS: {name}" in text
    assert "Testify" not in text
    assert done["b"]["status"] == "compile_error"
    assert "function main is undeclared" in output(events, "b")


def test_localhost_works_in_the_box_and_there_is_still_no_way_out(daemon):
    """Defect 4: the Playground's HTTP server example failed with `lookup localhost on
    [::1]:53`.  The box's /etc is the daemon's (read-only, naming the box's user), and its
    mount names no host directory."""
    events = daemon.run({"id": "h", "code": HTTP_SERVER})
    final = finals(events)["h"]
    assert final["status"] == "ok", output(events, "h")
    assert output(events, "h", "stdout") == (
        "Hello, playground\n"
        "localhost [127.0.0.1 ::1] <nil>\n"
        "ip6-localhost [::1] <nil>\n"
        "sandbox true /box <nil>\n"
        "/etc is /etc of its filesystem\n"  # the run's tmpfs: no host path in mountinfo
    )
