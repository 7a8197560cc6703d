"""Start a program the way systemd's socket activation does.

``python listen_fds.py unix:/path tcp:127.0.0.1:PORT -- program args...`` opens those listening
sockets, puts them at descriptors 3, 4, ..., sets ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and
``LISTEN_PID`` (this very process's pid: it then ``execv``s the program, which keeps the pid),
as systemd does for a service started by its ``.socket`` unit.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys

FIRST_FD = 3  # SD_LISTEN_FDS_START


def open_listener(spec: str) -> socket.socket:
    kind, _, where = spec.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(where)
        os.chmod(where, 0o660)
    elif kind == "tcp":
        host, _, port = where.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    else:
        raise SystemExit(f"unknown listener {spec}")
    sock.listen(50)
    return sock


def main() -> None:
    split = sys.argv.index("--")
    specs, argv = sys.argv[1:split], sys.argv[split + 1:]
    socks = [open_listener(spec) for spec in specs]
    # Move them out of the way first, then to 3, 4, ... in order.
    high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 100) for s in socks]
    for s in socks:
        s.close()
    for i, fd in enumerate(high):
        os.dup2(fd, FIRST_FD + i)
        os.set_inheritable(FIRST_FD + i, True)
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(specs))
    os.environ["LISTEN_FDNAMES"] = ":".join(spec.partition(":")[0] for spec in specs)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
