"""Helpers for the HTTP face's tests: a daemon with an ``--http`` listener on a free port."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from tests.harness import HANG, Daemon

SAMPLE = {"code": "package main\n\nimport (\n\t\"fmt\"\n\t\"time\"\n)\n\nfunc main() {\n\tfor i "
          ":= 0; i < 3; i++ {\n\t\tfmt.Println(\"Hello\", i)\n\t\ttime.Sleep(time.Second)\n\t}\n}"
          "\n", "session_id": "user_1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_daemon(*args: str, boxes: int = 2) -> tuple[Daemon, int]:
    """A started bubblewrap daemon with an HTTP listener on 127.0.0.1; (daemon, port)."""
    port = free_port()
    daemon = Daemon("bubblewrap", f"--http=tcp:{port}:interface=127.0.0.1", *args,
                    boxes=boxes).start()
    deadline = time.monotonic() + HANG
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return daemon, port
        except OSError:
            if time.monotonic() > deadline:
                daemon.cleanup()
                raise RuntimeError(f"no HTTP listener:\n{daemon.log()}") from None
            time.sleep(0.05)


class RawHTTP:
    """One HTTP/1.1 exchange on a plain socket, read as it arrives (so timing shows)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=HANG)
        self.buffer = b""

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> None:
        head = {"Host": "127.0.0.1", "Content-Length": str(len(body)),
                "Content-Type": "application/json", **(headers or {})}
        lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in head.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buffer += data

    def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        raw, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    def chunks(self) -> Any:
        """Each chunk of a chunked body, with the time it arrived; ends at the last chunk."""
        while True:
            while b"\r\n" not in self.buffer:
                self._fill()
            size_line, self.buffer = self.buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(self.buffer) < size + 2:
                self._fill()
            chunk, self.buffer = self.buffer[:size], self.buffer[size + 2:]
            if size == 0:
                return
            yield time.monotonic(), chunk

    def events(self) -> list[tuple[float, dict[str, Any]]]:
        """The NDJSON events of a chunked answer with the time each line was complete."""
        out, pending = [], b""
        for at, chunk in self.chunks():
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                out.append((at, json.loads(line)))
        assert pending == b"", pending
        return out

    def body(self, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding") == "chunked":
            return b"".join(chunk for _, chunk in self.chunks())
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return body

    def close(self) -> None:
        self.sock.close()


def exchange(port: int, method: str, path: str, body: bytes = b"",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = RawHTTP(port)
    try:
        conn.request(method, path, body, headers)
        status, head = conn.head()
        return status, head, conn.body(head)
    finally:
        conn.close()
