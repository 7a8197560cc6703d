"""Third-party modules: off by default; from an operator's read-only module cache; through an
operator's GOPROXY (a file:// directory, and http:// served on loopback) in a download step."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest

from tests.harness import Daemon, finals, output

GOROOT = Path(subprocess.run(
    [str(Path(sys.executable).parent / "go"), "env", "GOROOT"], capture_output=True,
    text=True, check=True).stdout.strip())
MODULE = "example.com/greet"
GREET = ('package greet\n\nimport "fmt"\n\n'
         'func Hi(n string) { fmt.Println("hi from a module,", n) }\n')
USES = ('package main\n\nimport "example.com/greet"\n\nfunc main() { greet.Hi("x") }\n')


def make_proxy(root: Path) -> Path:
    """A GOPROXY directory serving one tiny module, example.com/greet v1.0.0."""
    at = root / "proxy" / MODULE / "@v"
    at.mkdir(parents=True)
    (at / "list").write_text("v1.0.0\n")
    (at / "v1.0.0.info").write_text(json.dumps({"Version": "v1.0.0",
                                                "Time": "2024-01-01T00:00:00Z"}))
    mod = f"module {MODULE}\n\ngo 1.22\n"
    (at / "v1.0.0.mod").write_text(mod)
    with zipfile.ZipFile(at / "v1.0.0.zip", "w") as z:
        z.writestr(f"{MODULE}@v1.0.0/go.mod", mod)
        z.writestr(f"{MODULE}@v1.0.0/greet.go", GREET)
    return root / "proxy"


@pytest.fixture(scope="module")
def shared_dir():
    d = Path(tempfile.mkdtemp(prefix="sandboxd-modules-"))
    os.chmod(d, 0o755)  # box uids read the proxy and the cache
    yield d
    subprocess.run(["chmod", "-R", "u+w", str(d)], check=False)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def proxy(shared_dir):
    return make_proxy(shared_dir)


@pytest.fixture(scope="module")
def modcache(shared_dir, proxy):
    """A module cache as an operator fills it: go mod download through the proxy."""
    cache, work = shared_dir / "modcache", shared_dir / "work"
    work.mkdir()
    (work / "go.mod").write_text(f"module prep\n\ngo 1.22\n\nrequire {MODULE} v1.0.0\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(work), "GOROOT": str(GOROOT),
           "GOMODCACHE": str(cache), "GOPROXY": f"file://{proxy}", "GOSUMDB": "off",
           "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "GOCACHE": str(work / "gocache")}
    subprocess.run([str(GOROOT / "bin" / "go"), "mod", "download", MODULE], cwd=work, env=env,
                   check=True, capture_output=True, timeout=120)
    return cache


@pytest.fixture(scope="module")
def loopback_proxy(proxy):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(proxy))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def started(driver: str, *args: str):
    d = Daemon(driver, *args).start()
    return d


def check_module_run(d: Daemon) -> None:
    events = d.run({"id": "m", "code": USES},
                   {"id": "v", "type": "vet", "code": USES},
                   {"id": "missing", "code": USES.replace("greet", "nothere")})
    done = finals(events)
    assert done["m"]["status"] == "ok", output(events, "m")
    assert output(events, "m") == "hi from a module, x\n"
    assert done["v"]["status"] == "ok", output(events, "v")
    assert done["missing"]["status"] == "compile_error"
    assert "example.com/nothere" in output(events, "missing")


def test_modules_are_off_by_default(daemon):
    events = daemon.run({"id": "off", "code": USES})
    assert finals(events)["off"]["status"] == "compile_error"
    assert "example.com/greet" in output(events, "off")


def test_a_read_only_module_cache(driver, modcache):
    d = started(driver, f"--gomodcache={modcache}")
    try:
        check_module_run(d)
    finally:
        d.cleanup()


@pytest.mark.parametrize("kind", ["file", "http"])
def test_a_goproxy_in_a_download_step(driver, proxy, loopback_proxy, kind):
    url = f"file://{proxy}" if kind == "file" else loopback_proxy
    d = started(driver, f"--goproxy={url}")
    try:
        check_module_run(d)
        # The program itself still has no network, though the download step had it.
        probe = ('package main\n\nimport (\n\t"fmt"\n\t"net"\n\n\t"example.com/greet"\n)\n\n'
                 'func main() {\n\tgreet.Hi("p")\n\t_, err := net.Dial("tcp", "'
                 + loopback_proxy.removeprefix("http://") + '")\n\tfmt.Println(err != nil)\n}\n')
        events = d.run({"id": "net", "code": probe})
        assert output(events, "net", "stdout") == "hi from a module, p\ntrue\n"
    finally:
        d.cleanup()
