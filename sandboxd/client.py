"""``sandboxd-client``: run, test, vet and format Go code on a sandboxd, like the go command
(and ``judge``: a program's output on each case of a cases file against the expected one).

``run`` behaves like ``go run``: output appears live on the matching stream, this process's
stdin is forwarded to the program, Ctrl-C cancels the request, and the exit status is the
program's.  When the program did not get to exit by itself (a limit, a compile error, a bad
request) one line on stderr says why and the status is non-zero (see ``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import base64
import codecs
import difflib
import json
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from twisted.internet import defer

from sandboxd import api

# Exit status when the program did not exit by itself.
EXIT_CODES = {
    "compile_error": 1,
    "vet_issues": 1,
    "bad_request": 2,
    "timeout": 124,
    "cancelled": 130,
}
EXIT_OTHER = 1  # memory_limit, output_limit, queue_full, internal_error, ...
STDIN_CHUNK = 64 * 1024
SOURCE_SUFFIXES = (".go", ".mod", ".sum", ".txt", ".json", ".s")


class UsageError(Exception):
    """Bad arguments or files; the message is printed as it is."""


def read_sources(paths: list[str]) -> dict[str, str]:
    """The files to send: one directory (its tree), or files (by their base names)."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        root = Path(paths[0])
        files = {}
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if any(part.startswith((".", "_")) for part in rel.parts) or not path.is_file():
                continue
            if path.suffix in SOURCE_SUFFIXES:
                files[rel.as_posix()] = _read_text(path)
        if not files:
            raise UsageError(f"no Go files in {root}")
        return files
    files = {}
    for p in paths:
        path = Path(p)
        if path.is_dir():
            raise UsageError(f"{p}: give one directory, or files")
        if path.name in files:
            raise UsageError(f"two files are named {path.name}")
        files[path.name] = _read_text(path)
    return files


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None


def _shown(value: Any) -> str:
    """The server's own text (messages, versions) made safe for a terminal: every character
    that is not printable (controls, C1, bidi overrides, line separators) but newline and tab
    is shown as an escape.  The program's output (``_write``) is passed through as it is, like
    ``go run`` does."""
    text = str(value)
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def _write(stream: str, event: dict[str, Any]) -> None:
    out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    raw = event.get("output_base64")
    out.write(base64.b64decode(raw) if raw else event.get("output", "").encode("utf-8"))
    out.flush()


def _reason(final: dict[str, Any], say: bool = True) -> int:
    """Print why a request failed (when it did not just exit; ``say``: else print nothing)
    and return the exit status."""
    status = final.get("status")
    code = final.get("exit_code")
    if status == "ok":
        return 0
    if status == "runtime_error" and isinstance(code, int):
        return code
    if status == "runtime_error" and final.get("signal"):
        name = final["signal"]
        if say:
            print(f"sandboxd: {_shown(final.get('message', name))}", file=sys.stderr)
        num = getattr(signal.Signals, name, None)
        return 128 + int(num) if num is not None else EXIT_OTHER
    if say:
        print(f"sandboxd: {_shown(status)}: {_shown(final.get('message', ''))}",
              file=sys.stderr)
    return EXIT_CODES.get(str(status), EXIT_OTHER)


def _several(final: dict[str, Any]) -> int:
    """A run on several toolchains: one line per toolchain and whether the outputs differ
    (stderr), and the exit status of the request's status (``_reason``)."""
    results = final.get("results")
    if not isinstance(results, list):  # refused before it ran (bad_request)
        return _reason(final)
    for r in results:
        print(f"sandboxd: {_shown(r.get('go'))} ({_shown(r.get('version'))}): "
              f"{_shown(r.get('status'))}: {_shown(r.get('message', ''))}", file=sys.stderr)
    differ = "differ" if final.get("outputs_differ") else "are the same"
    print(f"sandboxd: the outputs {differ}", file=sys.stderr)
    return _reason(final, say=False)


class StdinForwarder:
    """Reads this process's stdin in a thread (works for a tty, a pipe and a file alike)
    and sends it to the running request."""

    def __init__(self, reactor: Any, conn: api.SandboxdProtocol, request_id: str) -> None:
        self.reactor = reactor
        self.conn = conn
        self.request_id = request_id
        self.stopped = False

    def start(self) -> None:
        threading.Thread(target=self._read, name="stdin", daemon=True).start()

    def _read(self) -> None:
        fd = sys.stdin.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")  # keeps split characters
        while not self.stopped:
            try:
                chunk = os.read(fd, STDIN_CHUNK)
            except OSError:
                chunk = b""
            if not chunk:
                self.reactor.callFromThread(self._send, decoder.decode(b"", True), True)
                return
            text = decoder.decode(chunk)
            if text:
                self.reactor.callFromThread(self._send, text, False)

    def _send(self, text: str, eof: bool) -> None:
        if not self.stopped and self.conn.transport is not None:
            self.conn.stdin(self.request_id, text, eof)


@defer.inlineCallbacks
def _run(reactor: Any, args: argparse.Namespace, test: bool = False):
    files = read_sources(args.paths)
    conn = yield api.connect(reactor, args.connect)
    # A fresh id: the server's log lines (and a shared session's) tell requests apart by it.
    request_id = _new_id("test" if test else "run")
    request: dict[str, Any] = {"type": "run", "id": request_id, "files": files,
                               "interactive": True}
    if test:
        request["test"] = True
        if getattr(args, "json", False):
            request["test_json"] = True
    if getattr(args, "bench", None) is not None:
        request["bench"] = args.bench
        if args.benchtime:
            request["benchtime"] = args.benchtime
    if getattr(args, "faketime", False):
        request["faketime"] = True
    _common(request, args)
    several = isinstance(request.get("go"), list)
    if several:  # each toolchain's run gets the same input: all of it, given at once
        del request["interactive"]
        if not sys.stdin.isatty():
            request["stdin"] = sys.stdin.buffer.read().decode("utf-8", "replace")
    shown_go: list[Any] = []
    forwarder = StdinForwarder(reactor, conn, request_id)
    cancelled = []

    def on_sigint(signum: int, frame: Any) -> None:
        if cancelled:
            os._exit(EXIT_CODES["cancelled"])
        cancelled.append(True)
        reactor.callFromThread(conn.cancel, request_id)

    signal.signal(signal.SIGINT, on_sigint)

    def on_event(event: dict[str, Any]) -> None:
        if event.get("done"):
            if event.get("id") is None and event.get("for_type") == "stdin":
                if not forwarder.stopped:
                    print(f"sandboxd: stdin: {_shown(event.get('message'))}", file=sys.stderr)
                    forwarder.stopped = True
                    conn.stdin(request_id, eof=True)  # the program gets what came, then the end
            elif event.get("id") is None:
                print(f"sandboxd: {_shown(event.get('message'))}", file=sys.stderr)
                os._exit(EXIT_CODES["bad_request"])
            return
        if several and event.get("go") not in shown_go:  # whose output follows
            shown_go.append(event.get("go"))
            sys.stdout.flush()
            print(f"sandboxd: == {_shown(event.get('go'))} ==", file=sys.stderr, flush=True)
        if "action" in event and request.get("test_json"):
            _print_test_json(event)
            return
        _write(event.get("stream", "stdout"), event)

    done = conn.request(request, on_event)
    if not several:
        forwarder.start()
    final = yield done
    forwarder.stopped = True
    conn.close()
    if request.get("test_json"):
        _print_test_json({"action": "pass" if final.get("status") == "ok" else "fail",
                          "test": None, "elapsed": (final.get("wall_ms") or 0) / 1000})
    return _several(final) if several else _reason(final)


def _print_test_json(event: dict[str, Any]) -> None:
    """A per-test event as ``go test -json`` prints it (so its readers, gotestsum or tparse,
    read these lines too); the package is the module ``sandbox``."""
    line: dict[str, Any] = {"Action": event.get("action"), "Package": "sandbox"}
    if event.get("test"):
        line["Test"] = event["test"]
    if event.get("elapsed") is not None:
        line["Elapsed"] = event["elapsed"]
    if "output" in event:
        raw = event.get("output_base64")
        line["Output"] = (base64.b64decode(raw).decode("utf-8", "replace") if raw
                          else event["output"])
    sys.stdout.write(json.dumps(line, ensure_ascii=True) + "\n")
    sys.stdout.flush()


def _new_id(command: str) -> str:
    """``run-`` and 12 random hex digits: unique across clients, not only on one connection."""
    return f"{command}-{secrets.token_hex(6)}"


def _common(request: dict[str, Any], args: argparse.Namespace) -> None:
    if getattr(args, "go", None):
        # NAME, or NAME,NAME,...: the program is built and run on each (run and test)
        names = args.go.split(",")
        request["go"] = names if len(names) > 1 and request.get("type") == "run" else args.go
    if getattr(args, "session", None):
        request["session_id"] = args.session
    limits: dict[str, Any] = {}
    for setting in getattr(args, "limit", None) or []:
        name, _, value = setting.partition("=")
        section, _, field = name.partition(".")
        try:
            number = int(value)
        except ValueError:
            raise UsageError(f"--limit {setting}: the value must be a whole number") from None
        if field:
            limits.setdefault(section, {})[field] = number
        else:
            limits[section] = number
    if limits:
        request["limits"] = limits


def read_cases(path: str) -> list[Any]:
    """A cases file: a JSON array of {"stdin": ..., "expected": ..., "name": ...} objects, sent
    as it is (the server checks each)."""
    text = _read_text(Path(path))
    try:
        cases = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{path}: not JSON ({e})") from None
    if not isinstance(cases, list):
        raise UsageError(f'{path}: a JSON array of {{"stdin": ..., "expected": ...}} is needed')
    return cases


def _case_line(event: dict[str, Any]) -> str:
    """One judged case, one line: its number and name, its verdict, where it went wrong."""
    name = f" ({_shown(event['name'])})" if event.get("name") else ""
    verdict = event.get("verdict")
    line = f"case {event.get('case')}{name}: {_shown(verdict)}"
    if event.get("wall_ms") is not None:
        line += f" ({event['wall_ms']} ms)"
    if verdict == "wrong_answer":
        line += (f": line {event.get('line')}: expected {_quoted(event.get('expected'))}, "
                 f"got {_quoted(event.get('got'))}")
    elif verdict != "accepted":
        line += f": {_shown(event.get('message', ''))}"
    return line


def _quoted(line: Any) -> str:
    return "(nothing)" if line is None else _shown(json.dumps(line, ensure_ascii=False))


@defer.inlineCallbacks
def _judge(reactor: Any, args: argparse.Namespace):
    if len(args.paths) < 2:
        raise UsageError("judge needs the program's files (or directory) and a cases file")
    files = read_sources(args.paths[:-1])
    cases = read_cases(args.paths[-1])
    conn = yield api.connect(reactor, args.connect)
    request: dict[str, Any] = {"type": "run", "id": _new_id("judge"), "files": files,
                               "cases": cases}
    _common(request, args)

    def on_event(event: dict[str, Any]) -> None:
        if "case" in event:
            print(_case_line(event), flush=True)
        elif not event.get("done"):  # the build's diagnostics
            _write(event.get("stream", "stderr"), event)

    final = yield conn.request(request, on_event)
    conn.close()
    if final.get("status") != "ok":
        return _reason(final)
    print(_shown(final.get("message", "")))
    return 0 if final.get("cases_accepted") == final.get("cases_total") else EXIT_OTHER


@defer.inlineCallbacks
def _vet(reactor: Any, args: argparse.Namespace):
    files = read_sources(args.paths)
    conn = yield api.connect(reactor, args.connect)
    request: dict[str, Any] = {"type": "vet", "id": _new_id("vet"), "files": files}
    _common(request, args)
    final = yield conn.request(
        request, lambda e: None if e.get("done") else _write(e.get("stream", "stderr"), e))
    conn.close()
    return _reason(final)


@defer.inlineCallbacks
def _fmt(reactor: Any, args: argparse.Namespace):
    conn = yield api.connect(reactor, args.connect)
    status = 0
    for name in args.paths:
        path = Path(name)
        paths = sorted(path.rglob("*.go")) if path.is_dir() else [path]
        for p in paths:
            source = _read_text(p)
            # One file, sent as ``files`` (never read as an archive); a go.mod as itself.
            name = "go.mod" if p.name == "go.mod" else "main.go"
            request: dict[str, Any] = {"type": "fmt", "id": _new_id("fmt"),
                                       "files": {name: source}}
            if args.imports:
                request["imports"] = True
            _common(request, args)
            errors: list[str] = []

            def collect(e: dict[str, Any], errors: list[str] = errors) -> None:
                if not e.get("done"):
                    errors.append(e.get("output", ""))

            final = yield conn.request(request, collect)
            if final.get("status") != "ok":
                text = "".join(errors) or f"{final.get('status')}: {final.get('message')}\n"
                sys.stderr.write(text.replace(f"{name}:", f"{p}:"))
                status = 2 if final.get("status") == "compile_error" else _reason(final)
                continue
            formatted = final["files"][name]
            if formatted == source:
                continue
            if args.diff:
                sys.stdout.writelines(difflib.unified_diff(
                    source.splitlines(keepends=True), formatted.splitlines(keepends=True),
                    f"{p}.orig", str(p)))
            else:
                p.write_text(formatted, encoding="utf-8")
    conn.close()
    return status


@defer.inlineCallbacks
def _version(reactor: Any, args: argparse.Namespace):
    conn = yield api.connect(reactor, args.connect)
    final = yield conn.request({"type": "version"})
    conn.close()
    if final.get("status") != "ok":
        return _reason(final)
    print(f"sandboxd {_shown(final.get('sandboxd'))}")
    default = final.get("default_go")
    for name, version in sorted((final.get("go") or {}).items()):
        mark = " (default)" if name == default else ""
        print(f"go {_shown(name)}: {_shown(version)}{mark}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sandboxd-client", description="Run Go code on a sandboxd server.")
    p.add_argument("--connect", default=os.environ.get(api.ENV_CONNECT, api.DEFAULT_CONNECT),
                   help="a Twisted client endpoint: unix:PATH, tcp:HOST:PORT, "
                        "tls:HOST:PORT:trustRoots=DIR:certificate=PEM:privateKey=PEM "
                        f"(default: ${api.ENV_CONNECT} or {api.DEFAULT_CONNECT})")
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in (("run", "build and run, like go run"),
                           ("test", "run the tests (Test…, Example…) verbosely"),
                           ("vet", "report go vet's findings")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--go", "-go", help="toolchain name (see: version)" + (
            "; several, comma-separated (old,default): built and run on each, one after "
            "another, and whether the outputs differ" if name != "vet" else ""))
        s.add_argument("--limit", action="append", metavar="PHASE.NAME=N",
                       help="lower a limit, e.g. run.wall_ms=2000; repeatable")
        if name != "vet":
            s.add_argument("--session", help="a session id: the box and its files persist")
            s.add_argument("-faketime", "--faketime", action="store_true",
                           help="the Go Playground's fake clock: time starts at 2009-11-10 "
                                "23:00:00 UTC and sleeps cost nothing")
        if name == "test":
            s.add_argument("-json", "--json", dest="json", action="store_true",
                           help="print one JSON line per test event, as go test -json does")
        s.add_argument("paths", nargs="+", metavar="FILE|DIR")
    b = sub.add_parser("bench", help="run the benchmarks matching REGEXP, like go test -bench")
    b.add_argument("-benchtime", "--benchtime", metavar="T",
                   help="Nx iterations or a duration (Nms, Ns) per benchmark, like go test's")
    b.add_argument("--go", help="toolchain name (see: version)")
    b.add_argument("--limit", action="append", metavar="PHASE.NAME=N",
                   help="lower a limit, e.g. run.wall_ms=2000; repeatable")
    b.add_argument("bench", metavar="REGEXP")
    b.add_argument("paths", nargs="+", metavar="FILE|DIR")
    j = sub.add_parser("judge", help="run the program on each case of a cases file and "
                                     "compare its output with the expected one")
    j.add_argument("--go", help="toolchain name (see: version)")
    j.add_argument("--limit", action="append", metavar="PHASE.NAME=N",
                   help="lower a limit (each case's), e.g. run.wall_ms=2000; repeatable")
    j.add_argument("paths", nargs="+", metavar="FILE|DIR",
                   help='the program\'s files or directory, then the cases file: a JSON array '
                        'of {"stdin": "...", "expected": "...", "name": "..."}')
    f = sub.add_parser("fmt", help="gofmt files in place (or -d: print a diff); a go.mod "
                                   "named here as the go command formats it")
    f.add_argument("-d", dest="diff", action="store_true", help="print diffs, change nothing")
    f.add_argument("-imports", "--imports", dest="imports", action="store_true",
                   help="goimports: add missing imports, remove unused ones")
    f.add_argument("--go", help="toolchain name")
    f.add_argument("paths", nargs="+", metavar="FILE|DIR")
    sub.add_parser("version", help="sandboxd's version and its Go toolchains")
    return p


COMMANDS = {
    "run": _run,
    "test": lambda r, a: _run(r, a, test=True),
    "bench": _run,
    "vet": _vet,
    "judge": _judge,
    "fmt": _fmt,
    "version": _version,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGINT, lambda *a: os._exit(EXIT_CODES["cancelled"]))
    from twisted.internet import reactor

    result: list[int] = []

    def finish(value: Any) -> None:
        if isinstance(value, int):
            result.append(value)
        else:
            error = value.value if hasattr(value, "value") else value
            if isinstance(error, UsageError):
                print(f"sandboxd-client: {error}", file=sys.stderr)
                result.append(2)
            elif isinstance(error, api.SandboxdError):  # its message names cause and remedy
                print(f"sandboxd-client: {error}", file=sys.stderr)
                result.append(EXIT_OTHER)
            else:
                print(f"sandboxd-client: {type(error).__name__}: {error}", file=sys.stderr)
                result.append(EXIT_OTHER)
        if reactor.running:
            reactor.stop()

    def start() -> None:
        d = defer.maybeDeferred(COMMANDS[args.command], reactor, args)
        d.addBoth(finish)

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    sys.stdout.flush()
    sys.stderr.flush()
    return result[0] if result else EXIT_OTHER


if __name__ == "__main__":
    sys.exit(main())
