"""Built programs, kept outside every box so the same source is never built twice.

The key covers every input of the build: each file's name and bytes, the toolchain's identity,
the build flags, what the request adds to the build's environment (``GOEXPERIMENT``), and the
build's limits: a program is never served to a request whose own
build settings differ from the build that made it (a request whose build limits would not let
it build gets its own answer, never another request's program).  Entries are written only by
the daemon (root-owned, read-only), copied out of the build box without following links,
bounded in total size (least recently used out) and placed read-only into the run's sandbox.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from twisted.logger import Logger

from sandboxd.boxes import hostfs
from sandboxd.limits import PhaseLimits

log = Logger()


class BinaryCache:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o711)
        self._entries: OrderedDict[str, int] = OrderedDict()
        self.total = 0
        found = []
        for entry in directory.iterdir():
            if entry.name.startswith("tmp") or not entry.is_file() or entry.is_symlink():
                entry.unlink(missing_ok=True)
                continue
            st = entry.stat()
            found.append((st.st_mtime, entry.name, st.st_size))
        for _, name, size in sorted(found):
            self._entries[name] = size
            self.total += size
        self._shrink()

    @staticmethod
    def key(files: dict[str, bytes], toolchain_ident: str, flags: tuple[str, ...],
            limits: PhaseLimits, env: dict[str, str] | None = None) -> str:
        """``env``: what the build's environment adds to the toolchain's (GOEXPERIMENT)."""
        digest = hashlib.sha256()
        digest.update(f"toolchain {toolchain_ident}\nflags {' '.join(flags)}\n".encode())
        for name, value in sorted((env or {}).items()):
            digest.update(f"env {len(name)} {name} {len(value)} {value}\n".encode())
        settings = " ".join(f"{name}={value}" for name, value in sorted(limits.as_dict().items()))
        digest.update(f"limits {settings}\n".encode())
        for name in sorted(files):
            data = files[name]
            digest.update(f"file {len(name)} {name} {len(data)}\n".encode())
            digest.update(data)
        return digest.hexdigest()

    def get(self, key: str) -> Path | None:
        if key not in self._entries:
            return None
        path = self.directory / key
        if not path.is_file():
            self.total -= self._entries.pop(key)
            return None
        self._entries.move_to_end(key)
        return path

    def put_file(self, key: str, source: int, size: int) -> Path:
        """Store ``size`` bytes of the open file ``source``, copied in the kernel."""
        return self._store(key, size, lambda fd: hostfs.copy_fd(source, fd, size))

    def _store(self, key: str, size: int, write: Callable[[int], None]) -> Path:
        fd, tmp = tempfile.mkstemp(prefix="tmp", dir=self.directory)
        try:
            try:
                write(fd)
                os.fchmod(fd, 0o555)
            finally:
                os.close(fd)
            os.rename(tmp, self.directory / key)
        except BaseException:
            os.unlink(tmp)
            raise
        if key in self._entries:
            self.total -= self._entries.pop(key)
        self._entries[key] = size
        self.total += size
        self._shrink(keep=key)
        return self.directory / key

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def _shrink(self, keep: str | None = None) -> None:
        while self.total > self.max_bytes and self._entries:
            oldest = next(iter(self._entries))
            if oldest == keep and len(self._entries) == 1:
                break
            if oldest == keep:
                self._entries.move_to_end(keep)
                continue
            self.total -= self._entries.pop(oldest)
            (self.directory / oldest).unlink(missing_ok=True)
