"""The caches are correct: the binary cache never serves an old build, nothing in a box can
change a cache entry or the standard-library cache, and the binary cache keeps its bound.

Real daemons, real Go, real sandboxes (bubblewrap, and isolate where installed).  "Built" and
"not built" are read from the final event: ``build_ms`` is set only when this request built
the program, ``cached`` only when it came from the binary cache (docs/protocol.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from sandboxd.boxes.box import Box
from sandboxd.golang import toolchain
from sandboxd.limits import DEFAULT_LIMITS
from sandboxd.sandbox.cgroup import CgroupSupport
from sandboxd.sandbox.driver import STATUS_FD
from sandboxd.sandbox.drivers import Mount, SandboxRun, choose
from sandboxd.status import Phase
from tests.harness import Daemon, _claim_box_range, finals, go_main, output

LOOP_CLOSURES = go_main(
    "\tvar fs []func() int\n\tfor i := 0; i < 3; i++ {\n"
    "\t\tfs = append(fs, func() int { return i })\n\t}\n"
    "\tfor _, f := range fs {\n\t\tfmt.Print(f())\n\t}\n\tfmt.Println()"
)


def built(final: dict) -> bool:
    assert final["status"] == "ok", final
    return final["build_ms"] is not None and final["cached"] is False


def from_cache(final: dict) -> bool:
    assert final["status"] == "ok", final
    return final["build_ms"] is None and final["cached"] is True


def one(daemon: Daemon, request: dict, rid: str = "r") -> tuple[dict, str]:
    events = daemon.run({**request, "id": rid})
    return finals(events)[rid], output(events, rid)


def default_toolchain() -> toolchain.Toolchain:
    return toolchain.load(toolchain.find_goroot(None), toolchain.DEFAULT_CACHE_DIR)


def tree_state(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry under ``root``: size, mode, owner and modification time."""
    state = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            state[os.path.relpath(p, root)] = (st.st_size, st.st_mode, st.st_uid, st.st_mtime_ns)
    return state


# -- a changed input is never served an old binary ------------------------------------------


def test_changed_main_go_is_built_again(daemon):
    first, out1 = one(daemon, {"code": go_main('\tfmt.Println("changed-a")')})
    again, out2 = one(daemon, {"code": go_main('\tfmt.Println("changed-a")')})
    other, out3 = one(daemon, {"code": go_main('\tfmt.Println("changed-b")')})
    assert from_cache(again) and out2 == out1 == "changed-a\n"
    assert built(other) and out3 == "changed-b\n"
    assert first["status"] == "ok"


def test_changed_second_file_is_built_again(daemon):
    main = go_main("\tfmt.Println(helper())")

    def files(value: str) -> dict:
        helper = f'package main\n\nfunc helper() string {{ return "{value}" }}\n'
        return {"files": {"main.go": main, "helper.go": helper}}

    _, out1 = one(daemon, files("second-1"))
    again, _ = one(daemon, files("second-1"))
    changed, out2 = one(daemon, files("second-2"))
    assert out1 == "second-1\n" and from_cache(again)
    assert built(changed) and out2 == "second-2\n"


def test_changed_go_mod_is_built_again(daemon):
    # Before go 1.22 a loop variable is shared by every iteration; after, each has its own:
    # the output tells which go.mod the binary was really built with.
    old = {"files": {"main.go": LOOP_CLOSURES, "go.mod": "module sandbox\n\ngo 1.21\n"}}
    new = {"files": {"main.go": LOOP_CLOSURES, "go.mod": "module sandbox\n\ngo 1.22\n"}}
    _, out_old = one(daemon, old)
    again, _ = one(daemon, old)
    changed, out_new = one(daemon, new)
    assert out_old == "333\n" and from_cache(again)
    assert built(changed) and out_new == "012\n"
    # Only the module path changed: still a different build.
    renamed, _ = one(daemon, {"files": {"main.go": LOOP_CLOSURES,
                                        "go.mod": "module other\n\ngo 1.22\n"}})
    assert built(renamed)


def test_identical_requests_together_build_once(daemon):
    code = go_main('\tfmt.Println("together")')
    events = daemon.run({"code": code, "id": "t1"}, {"code": code, "id": "t2"},
                        {"code": code, "id": "t3"})
    done = finals(events)
    assert all(done[i]["status"] == "ok" for i in ("t1", "t2", "t3"))
    assert all(output(events, i) == "together\n" for i in ("t1", "t2", "t3"))
    builders = [i for i in ("t1", "t2", "t3") if done[i]["build_ms"] is not None]
    assert len(builders) == 1, done


def test_the_run_clock_starts_with_the_program_not_during_the_build(daemon):
    # bubblewrap sets the run's sandbox up while the build runs (held): its 100 ms of wall
    # time must start when the program does, not while the (longer) build still runs.
    events = daemon.run({"code": go_main('\tfmt.Println("held")'), "id": "h",
                         "limits": {"run": {"wall_ms": 100}}})
    final = finals(events)["h"]
    assert built(final) and output(events, "h") == "held\n"
    assert final["wall_ms"] < 100


def test_a_failed_build_leaves_the_box_usable(daemon):
    bad = daemon.run({"code": go_main("\tundefined()"), "id": "bad"})
    assert finals(bad)["bad"]["status"] == "compile_error"
    good = daemon.run(*[{"code": go_main(f'\tfmt.Println("after", {i})'), "id": f"g{i}"}
                        for i in range(3)])
    assert all(output(good, f"g{i}") == f"after {i}\n" for i in range(3))


# -- nothing in a box changes a cache ---------------------------------------------------------

ATTACK_CACHE = go_main(
    "\tscript := `for t in /prog/main /gocache /go; do\n"
    "  ( echo x > $t/x ) 2>/dev/null && echo \"wrote $t/x\"\n"
    "done\n"
    "( echo x >> /prog/main ) 2>/dev/null && echo 'appended /prog/main'\n"
    "( : > /prog/main ) 2>/dev/null && echo 'truncated /prog/main'\n"
    "chmod 777 /prog/main 2>/dev/null && echo 'chmod /prog/main'\n"
    "rm -f /prog/main 2>/dev/null; [ -e /prog/main ] || echo 'removed /prog/main'\n"
    "mv /prog/main /prog/moved 2>/dev/null && echo 'moved /prog/main'\n"
    "ls /gocache /go 2>/dev/null | head -3\n"
    "echo attack-done`\n"
    '\terr := syscall.Exec("/bin/sh", []string{"sh", "-c", script}, os.Environ())\n'
    '\tfmt.Println("exec failed:", err)',
    imports=("fmt", "os", "syscall"),
)


def test_program_cannot_change_its_cache_entry_or_reach_the_caches(daemon):
    # The program execs a shell (so /prog/main is no longer busy) that tries every way to
    # change /prog/main, and to write or even see /gocache and /go.
    first, out = one(daemon, {"code": ATTACK_CACHE})
    assert first["status"] == "ok" and out == "attack-done\n", out
    entries = list((daemon.state_dir / "binaries").iterdir())
    digests = {}
    for entry in entries:
        st = entry.lstat()
        assert st.st_uid == 0 and st.st_mode & 0o222 == 0, (entry, oct(st.st_mode))
        digests[entry.name] = hashlib.sha256(entry.read_bytes()).hexdigest()
    again, out2 = one(daemon, {"code": ATTACK_CACHE})
    assert from_cache(again) and out2 == "attack-done\n"
    for entry in entries:
        assert hashlib.sha256(entry.read_bytes()).hexdigest() == digests[entry.name]


def test_builds_cannot_change_the_std_cache(daemon):
    std = default_toolchain().std_cache
    before = tree_state(std)
    assert len(before) > 1000  # the real cache, not an empty directory
    main = go_main('\tfmt.Println("std-ok")')
    tricks = [
        {"main.go": main, "go.mod": "module sandbox\n\ngo 1.22\n\ntoolchain go1.99.0\n"},
        {"main.go": main,
         "go.mod": "module sandbox\n\ngo 1.23\n\ngodebug (\n\tdefault=go1.21\n\tgoindex=1\n)\n"},
        {"main.go": go_main('\tfmt.Println(x.X)', imports=("fmt", "example.com/x")),
         "go.mod": "module sandbox\n\ngo 1.22\n\nrequire example.com/x v0.0.0\n\n"
                   "replace example.com/x => /gocache\n"},
        {"main.go": main, "trim.txt": "0\n", "README": "x\n",
         "00.go": "package main\n"},
        {"main.go": "//go:generate sh -c 'echo x > /gocache/x'\n" + main},
    ]
    requests = [{"files": files, "id": f"k{i}"} for i, files in enumerate(tricks)]
    events = daemon.run(*requests)
    done = finals(events)
    for r in requests:
        assert done[r["id"]]["status"] in ("ok", "compile_error", "bad_request"), done[r["id"]]
    assert tree_state(std) == before


# -- the binary cache keeps its bound (LRU) ---------------------------------------------------


@pytest.fixture(scope="module")
def small_cache(driver):
    d = Daemon(driver, "--binary-cache-mb=5").start()
    try:
        yield d
    finally:
        d.cleanup()


def test_binary_cache_stays_within_its_bound(small_cache):
    limit = 5 * 1024 * 1024
    cache = small_cache.state_dir / "binaries"

    def program(n: int) -> dict:
        return {"code": go_main(f'\tfmt.Println("bound", {n})')}

    def size() -> int:
        return sum(p.stat().st_size for p in cache.iterdir())

    _, out = one(small_cache, program(1))  # a hello world is ~2.3 MB: two fit, three do not
    assert out == "bound 1\n"
    one(small_cache, program(2))
    assert len(list(cache.iterdir())) == 2 and size() <= limit
    assert from_cache(one(small_cache, program(1))[0])  # 1 is now the most recently used
    one(small_cache, program(3))  # evicts 2, the least recently used
    assert size() <= limit and len(list(cache.iterdir())) == 2
    assert from_cache(one(small_cache, program(1))[0])
    assert from_cache(one(small_cache, program(3))[0])
    assert built(one(small_cache, program(2))[0])
    for n in range(4, 7):
        one(small_cache, program(n))
        assert size() <= limit
    assert not [p for p in cache.iterdir() if p.name.startswith("tmp")]


# -- a changed toolchain never reuses a binary ------------------------------------------------


@pytest.fixture(scope="module")
def two_toolchains(driver):
    """A daemon with the default toolchain and "alt": the same Go with one tool's bytes changed
    (so a different ident).  Both caches are hard-linked copies, so no 40 s warm is needed."""
    real = default_toolchain()
    work = Path(tempfile.mkdtemp(prefix="test-caches-", dir=real.cache_dir))
    try:
        os.chmod(work, 0o755)  # box uids must reach the toolchain and the std cache
        cache_dir = work / "cache"
        cache_dir.mkdir(mode=0o755)
        alt_root = work / "go-alt"
        subprocess.run(["cp", "-al", str(real.goroot), str(alt_root)], check=True)
        tool = next((alt_root / "pkg" / "tool").glob("*/cover"))
        data = tool.read_bytes()
        tool.unlink()  # a hard link to the real toolchain: replace, never write through it
        tool.write_bytes(data + b"\0sandboxd test\0")
        tool.chmod(0o755)
        _, alt_ident = toolchain.identify(alt_root)
        assert alt_ident != real.ident
        for ident, goroot in ((real.ident, real.goroot), (alt_ident, alt_root)):
            subprocess.run(["cp", "-al", str(goroot), str(cache_dir / f"go-{ident}")],
                           check=True)
            subprocess.run(["cp", "-al", str(real.std_cache), str(cache_dir / f"std-{ident}")],
                           check=True)
        d = Daemon(driver, f"--cache-dir={cache_dir}", f"--go=alt={alt_root}").start()
        try:
            yield d
        finally:
            d.cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_changed_toolchain_builds_again(two_toolchains):
    code = go_main('\tfmt.Println("toolchain")')
    first, out = one(two_toolchains, {"code": code})
    again, _ = one(two_toolchains, {"code": code})
    alt, out_alt = one(two_toolchains, {"code": code, "go": "alt"})
    alt_again, _ = one(two_toolchains, {"code": code, "go": "alt"})
    assert built(first) and from_cache(again) and out == "toolchain\n"
    assert built(alt) and out_alt == "toolchain\n"
    assert from_cache(alt_again)
    assert len(list((two_toolchains.state_dir / "binaries").iterdir())) == 2


# -- every standard package comes from the std cache ------------------------------------------


def test_a_build_in_a_box_compiles_only_the_program(driver):
    """``go build -x`` exactly as a request's build runs (driver, mounts, environment, flags):
    only ``main`` is compiled; a difference between the warm's and the builds' environment
    would make go compile the standard library again, at every build, without failing."""
    tc = default_toolchain()
    work = Path(tempfile.mkdtemp(prefix="sandboxd-test-x-"))
    os.chmod(work, 0o755)
    _, first = _claim_box_range()
    number = first + 15
    drv = choose(driver, state_dir=work / "state", cgroups=CgroupSupport(None, {}),
                 first_uid=100000 + first)
    if drv.needs_init:  # isolate: sandboxd's box init, as the daemon's warm step gives it
        drv.use_init(toolchain.box_init(tc))
    box = Box(number, drv.uid_for(number), drv.gid_for(number), drv.workspace_for(number))
    src, out = work / "src", work / "out"
    src.mkdir(mode=0o755)
    out.mkdir(mode=0o700)
    os.chown(out, box.uid, box.gid)
    (src / "go.mod").write_bytes(tc.go_mod())
    (src / "main.go").write_text(go_main('\tfmt.Println(strings.ToUpper("x"), time.Second)',
                                         imports=("fmt", "strings", "time")))
    argv = tc.build_argv()
    argv.insert(argv.index("build") + 1, "-x")
    run = SandboxRun(phase=Phase.BUILD, box=box, argv=argv, env=tc.build_env(),
                     cwd="/src", limits=DEFAULT_LIMITS.build, with_workspace=False,
                     mounts=[Mount(tc.goroot, "/go"), Mount(tc.std_cache, "/gocache"),
                             Mount(src, "/src"), Mount(out, "/out", writable=True)])
    drv.create_box(box, 64)
    try:
        drv.prepare(run)
        cmd, env = drv.command(run)
        sink = os.open(os.devnull, os.O_WRONLY)
        fds = {STATUS_FD: sink, **run.fds}
        if drv.stderr_fd != 2:  # the build's own stderr: here the same pipe as the tool's
            fds[drv.stderr_fd] = 2

        def place() -> None:
            for child_fd, fd in fds.items():
                os.dup2(fd, child_fd)

        try:
            proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=120, pass_fds=tuple(fds), preexec_fn=place)
        finally:
            os.close(sink)
            run.close_fds()
            drv.finish(run)
    finally:
        drv.destroy_box(box)
        shutil.rmtree(work, ignore_errors=True)
    log = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, log
    compiles = [line for line in log.splitlines() if "/compile " in line and " -V=full" not in line]
    assert len(compiles) == 1 and " -p main " in compiles[0], compiles
    assert "packagefile fmt=/gocache/" in log and "packagefile time=/gocache/" in log
