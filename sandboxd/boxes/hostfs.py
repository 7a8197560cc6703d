"""The host's careful file operations on places a sandboxed program could have touched.

Judge0's CVE-2024-28185 and CVE-2024-28189 were a root host following links that a program
planted in its box.  Everything the daemon does inside a box directory goes through here: it
never resolves a symlink there, never reuses a hard link from there, and never writes into a
directory the box could write to.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
from pathlib import Path

MIB = 1024 * 1024
# A box's tmpfs holds this many files per MiB of its size (its inode bound).
INODES_PER_MB = 256

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MS_NOSUID, MS_NODEV, MS_REMOUNT = 2, 4, 32
MNT_DETACH = 2
O_SAFE = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY

assert shutil.rmtree.avoids_symlink_attacks, "this platform's rmtree follows symlinks"


class UnsafeFile(OSError):
    """A file the box left that is not what the host expected (a link, a device, too big)."""


def mount_tmpfs(path: Path, size_bytes: int, inodes: int, uid: int, gid: int,
                remount: bool = False) -> None:
    """Mount (or resize) a private, size-bounded tmpfs owned by the box's uid."""
    options = f"size={size_bytes},nr_inodes={inodes},mode=0700,uid={uid},gid={gid}"
    flags = MS_NOSUID | MS_NODEV | (MS_REMOUNT if remount else 0)
    if _libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", flags, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")


def unmount(path: Path) -> bool:
    """Detach whatever is mounted on ``path``; False when nothing was."""
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return False
        raise OSError(err, f"umount {path}: {os.strerror(err)}")
    return True


def is_mountpoint(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def remove_tree(path: Path) -> None:
    """Remove a directory tree without following any link inside it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def open_box_file(directory: Path, name: str, max_bytes: int) -> tuple[int, int]:
    """Open a regular file the box wrote, refusing links, devices and oversized files.

    Returns the open descriptor (the caller closes it) and the file's size.
    """
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | O_SAFE)
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | O_SAFE, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafeFile(errno.ELOOP, f"{name} is a symbolic link") from None
            raise
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(errno.EINVAL, f"{name} is not a regular file")
        if st.st_nlink != 1:
            raise UnsafeFile(errno.EMLINK, f"{name} has other hard links")
        if st.st_size > max_bytes:
            raise UnsafeFile(errno.EFBIG, f"{name} is larger than {max_bytes} bytes")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def copy_fd(source: int, target: int, size: int) -> None:
    """Copy exactly ``size`` bytes in the kernel (sendfile: ~1 ms for a 2 MB program, where
    reading it into Python and writing it out took ~8 ms here)."""
    offset = 0
    while offset < size:
        sent = os.sendfile(target, source, offset, size - offset)
        if sent == 0:
            raise UnsafeFile(errno.EIO, "the file shrank while it was copied")
        offset += sent


def write_tree(root: Path, files: dict[str, bytes], mode: int = 0o644) -> None:
    """Write files into ``root``, a directory the daemon just made and no box can write."""
    for name, data in files.items():
        target = root.joinpath(*name.split("/"))
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_SAFE, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def make_private_dir(path: Path, uid: int = 0, gid: int = 0, mode: int = 0o755) -> None:
    """Create ``path`` fresh (it must not exist) and give it to ``uid``."""
    os.mkdir(path, mode)
    os.chmod(path, mode)
    if uid or gid:
        os.chown(path, uid, gid)


def make_scratch_dir(path: Path, size_bytes: int, inodes: int) -> bool:
    """A fresh root-owned (0711) directory for one build's files, on a tmpfs of its own
    where the host allows: what a build writes (its binary, downloaded modules) is then
    bounded by ``size_bytes`` and never reaches the host's disk.  False: a plain directory."""
    make_private_dir(path, 0, 0, 0o711)
    try:
        mount_tmpfs(path, size_bytes, inodes, 0, 0)
    except OSError:
        return False
    os.chmod(path, 0o711)
    return True


def tmpfs_bounds(disk_mb: int, min_inodes: int = 64) -> tuple[int, int]:
    """A box tmpfs's size in bytes and its inode bound, for ``disk_mb`` MiB (the one formula:
    INODES_PER_MB files per MiB, never fewer than ``min_inodes``)."""
    return disk_mb * MIB, max(min_inodes, disk_mb * INODES_PER_MB)


def unmount_all(path: Path) -> None:
    """Unmount ``path`` until nothing is mounted there (mounts may be stacked)."""
    while is_mountpoint(path):
        unmount(path)


def remove_mounted(path: Path) -> None:
    """Unmount everything at ``path``, then remove it and what it holds."""
    unmount_all(path)
    remove_tree(path)


def remove_scratch_dir(path: Path) -> None:
    remove_mounted(path)
