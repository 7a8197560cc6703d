"""One request line, checked: what the client asked for, or why it is a bad request."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sandboxd.limits import LimitError, LimitPolicy, Limits
from sandboxd.wire import txtar
from sandboxd.wire.testopts import OptionError, TestOptions, test_options

MAX_ID_LENGTH = 128
SESSION_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
FILE_PART = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9._+-]{0,99}\Z")
MAX_FILE_DEPTH = 4
MAX_NESTING = 16
MAX_TOOLCHAINS = 4  # names in one request's ``go`` list (a run on each, one after another)

REQUEST_FIELDS = {
    "run": {"type", "id", "code", "files", "session_id", "limits", "stdin", "interactive",
            "go", "test", "test_json", "bench", "benchtime", "cases", "faketime"},
    "fmt": {"type", "id", "code", "files", "go", "imports"},
    "vet": {"type", "id", "code", "files", "limits", "go"},
    "version": {"type", "id"},
    # Control lines: ``id`` names a request already running on this connection.
    "stdin": {"type", "id", "data", "eof"},
    "cancel": {"type", "id"},
}
CONTROL_TYPES = ("stdin", "cancel")
# Judging (``cases``): at most this many cases in one request; their ``stdin`` and ``expected``
# texts together at most ``SourceLimits.max_stdin_bytes``.
MAX_CASES = 64
CASE_FIELDS = {"stdin", "expected", "name"}
MAX_CASE_NAME = 64

_counter = itertools.count(1)


class BadRequest(ValueError):
    """The line cannot be served; ``id`` is the client's id when one could be read."""

    def __init__(self, message: str, request_id: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.fields = fields  # more fields for the final event


@dataclass
class SourceLimits:
    """How much source one request may carry."""

    max_bytes: int = 512 * 1024
    max_files: int = 20
    max_stdin_bytes: int = 1024 * 1024  # a run's whole stdin, given at once or interactively


@dataclass(frozen=True)
class Case:
    """One case to judge a program on: its whole stdin and the output expected of it."""

    stdin: bytes
    expected: bytes
    name: str | None = None


@dataclass
class Request:
    """A checked request to build and run Go source."""

    id: str
    files: dict[str, bytes]
    limits: Limits
    session_id: str | None = None
    type: str = "run"
    stdin: bytes = b""
    interactive: bool = False
    go: str | None = None  # a toolchain name; None: the default one
    # ``go`` as a list: the toolchains to build and run on, in order (``jobs/versions.py``);
    # empty for a request on one toolchain (``go``)
    toolchains: tuple[str, ...] = ()
    test: bool = False  # run the package's tests even when it has a main
    options: TestOptions = field(default_factory=TestOptions)  # test_json, bench (testopts)
    cases: tuple[Case, ...] | None = None  # judge the program on these (see ``_cases``)
    imports: bool = False  # fmt: goimports fixes the imports
    # fmt: the shape of the answer, the request's own: "code" (main.go's text), "files" (an
    # object), "txtar" (an archive, every file after its marker) or "txtar-head" (an archive
    # whose main.go is the text before the first marker)
    shape: str = "code"
    archive: bytes = b""  # fmt: the archive as sent (the answer says whether it differs)
    faketime: bool = False  # built with the Playground's fake clock (docs/protocol.md)


@dataclass
class Control:
    """A line about a running request: more stdin, end of stdin, or cancel."""

    type: str  # "stdin" or "cancel"
    target: str  # the id of the running request
    data: bytes = b""
    eof: bool = False


def new_request_id() -> str:
    """An id for a request that came without one; never clashes with an earlier one."""
    return f"req-{next(_counter)}"


def parse_line(
    line: bytes,
    policy: LimitPolicy,
    sources: SourceLimits | None = None,
    toolchains: Collection[str] = (),
) -> Request | Control:
    """Turn one line into a ``Request`` or ``Control``, or raise ``BadRequest`` saying why."""
    sources = sources or SourceLimits()
    obj, request_id = _decode(line)
    kind = obj.get("type", "run")
    if not isinstance(kind, str):
        raise BadRequest("field 'type' must be a string", request_id)
    allowed = REQUEST_FIELDS.get(kind)
    if allowed is None:
        known = ", ".join(sorted(REQUEST_FIELDS))
        raise BadRequest(f"unknown request type {kind!r} (known: {known})", request_id)
    if kind in CONTROL_TYPES:
        return _control(obj, kind, request_id, allowed)
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} for a {kind!r} request", request_id)
    go, several = _toolchain(obj.get("go"), kind, toolchains, request_id)
    if kind == "version":
        return Request(id=request_id or new_request_id(), files={},
                       limits=policy.resolve(None), type=kind)
    session_id = _session_id(obj, request_id)
    if kind == "fmt" and "files" not in obj and not isinstance(obj.get("code"), str):
        raise BadRequest("field 'code' (a string) or 'files' is required for 'fmt'", request_id)
    files = _files(obj, request_id, sources)
    try:
        limits = policy.resolve(obj.get("limits"))
    except LimitError as e:
        raise BadRequest(str(e), request_id) from None
    stdin, interactive = _input(obj, sources, request_id)
    try:
        options = test_options(obj)
    except OptionError as e:
        raise BadRequest(str(e), request_id) from None
    if several and (session_id is not None or interactive):
        what = "'session_id'" if session_id is not None else "'interactive'"
        raise BadRequest(f"{what} cannot be used with several toolchains: each runs in a "
                         "fresh box, with the same 'stdin'", request_id)
    test = _flag(obj, "test", request_id)
    faketime = _flag(obj, "faketime", request_id)
    if faketime and (options.test_json or options.bench is not None):
        raise BadRequest("'faketime' cannot be used with "
                         f"{'test_json' if options.test_json else 'bench'}", request_id)
    cases = None
    if "cases" in obj:
        given = [name for name, on in (("stdin", "stdin" in obj), ("interactive", interactive),
                                       ("test", test), ("session_id", session_id is not None),
                                       ("test_json", options.test_json),
                                       ("bench", options.bench is not None),
                                       ("go as a list", bool(several)),
                                       ("faketime", faketime)) if on]
        if given:
            raise BadRequest(f"give either 'cases' or {given[0]!r}, not both", request_id)
        cases = _cases(obj["cases"], request_id, sources)
    # Assigned only now: a refused line never used up an id, and its final event says null.
    return Request(
        id=request_id or new_request_id(), files=files, limits=limits, session_id=session_id,
        type=kind, stdin=stdin, interactive=interactive, go=go, test=test,
        options=options, toolchains=several, cases=cases,
        faketime=faketime,
        imports=_flag(obj, "imports", request_id), shape=_shape(obj),
        archive=_encode(obj["code"]) if _shape(obj).startswith("txtar") else b"",
    )


def _decode(line: bytes) -> tuple[dict[str, Any], str | None]:
    """The line's JSON object and the request's id (None when it has none, or a bad one)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"the line is not valid UTF-8 (byte {e.start})") from None
    text = text.strip()
    if not text:
        raise BadRequest("empty line")
    duplicates: list[str] = []
    try:
        obj = json.loads(text, object_pairs_hook=lambda pairs: _object(pairs, duplicates))
    except RecursionError:
        raise BadRequest("the JSON is nested too deeply") from None
    except ValueError as e:
        raise BadRequest(f"the line is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"a request must be a JSON object, not {_json_type(obj)}")
    if duplicates:
        # Which of two values was meant cannot be known (Python's json keeps the last, other
        # parsers the first), so neither is taken; the id too only when it is not the key.
        request_id = _request_id(obj) if "id" not in duplicates else None
        raise BadRequest(f"the key {duplicates[0]!r} appears twice in one object", request_id)
    request_id = _request_id(obj)
    if _depth(obj) > MAX_NESTING:
        raise BadRequest("the JSON is nested too deeply", request_id)
    return obj, request_id


def _toolchain(go: Any, kind: str, toolchains: Collection[str],
               request_id: str | None) -> tuple[str | None, tuple[str, ...]]:
    """``go``: one known toolchain's name (None: the default), or a list of them."""
    if isinstance(go, list):
        return None, _several_toolchains(go, kind, toolchains, request_id)
    if go is not None and (not isinstance(go, str) or go not in toolchains):
        known = ", ".join(sorted(toolchains)) or "none"
        raise BadRequest(f"unknown Go toolchain {go!r} (this server has: {known})", request_id)
    return go, ()


def _session_id(obj: dict[str, Any], request_id: str | None) -> str | None:
    session_id = obj.get("session_id")
    if session_id is not None:
        if not isinstance(session_id, str):
            raise BadRequest("field 'session_id' must be a string", request_id)
        if not SESSION_ID.match(session_id):
            raise BadRequest(
                "field 'session_id' must be 1-64 characters of A-Z a-z 0-9 . _ - "
                "starting with a letter or digit",
                request_id,
            )
    return session_id


def _input(obj: dict[str, Any], sources: SourceLimits,
           request_id: str | None) -> tuple[bytes, bool]:
    """The program's whole ``stdin``, or ``interactive`` (its stdin kept open)."""
    stdin = obj.get("stdin", "")
    if not isinstance(stdin, str):
        raise BadRequest("field 'stdin' must be a string", request_id)
    stdin_bytes = _encode(stdin)
    if len(stdin_bytes) > sources.max_stdin_bytes:
        raise BadRequest(
            f"stdin is larger than this server's maximum ({sources.max_stdin_bytes} bytes)",
            request_id,
        )
    interactive = _flag(obj, "interactive", request_id)
    if interactive and stdin:
        raise BadRequest("give either 'stdin' or 'interactive', not both", request_id)
    return stdin_bytes, interactive


def _several_toolchains(names: list[Any], kind: str, toolchains: Collection[str],
                        request_id: str | None) -> tuple[str, ...]:
    """``go`` as a list: 1 to ``MAX_TOOLCHAINS`` known toolchain names, each once."""
    if kind != "run":
        raise BadRequest(f"field 'go' must be one toolchain name for a {kind!r} request "
                         "(a list is for 'run')", request_id)
    if not 1 <= len(names) <= MAX_TOOLCHAINS:
        raise BadRequest(f"field 'go' as a list names 1 to {MAX_TOOLCHAINS} toolchains, "
                         f"not {len(names)}", request_id)
    known = ", ".join(sorted(toolchains)) or "none"
    for i, name in enumerate(names):
        if not isinstance(name, str) or name not in toolchains:
            raise BadRequest(f"unknown Go toolchain {name!r} (this server has: {known})",
                             request_id)
        if name in names[:i]:
            raise BadRequest(f"toolchain {name!r} is named twice in 'go'", request_id)
    return tuple(names)


def _cases(cases: Any, request_id: str | None, sources: SourceLimits) -> tuple[Case, ...]:
    """A judging request's cases: 1 to ``MAX_CASES`` objects of ``stdin`` and ``expected``
    (strings) and an optional ``name``; their texts together within ``max_stdin_bytes``.  The
    cases are the program's only input: not with ``stdin``, ``interactive`` or ``test``, nor
    with a session (each case runs in a clean box; a session's box keeps its files): the
    caller refuses those."""
    if not isinstance(cases, list) or not cases:
        raise BadRequest("field 'cases' must be a non-empty array of "
                         "{\"stdin\": ..., \"expected\": ...}", request_id)
    if len(cases) > MAX_CASES:
        raise BadRequest(f"too many cases: {len(cases)} (at most {MAX_CASES})", request_id)
    out: list[Case] = []
    total = 0
    for i, case in enumerate(cases):
        where = f"cases[{i}]"
        if not isinstance(case, dict):
            raise BadRequest(f"{where} must be an object of 'stdin' and 'expected'", request_id)
        unknown = sorted(set(case) - CASE_FIELDS)
        if unknown:
            raise BadRequest(f"unknown field {unknown[0]!r} in {where} (known: expected, name, "
                             "stdin)", request_id)
        texts = []
        for key in ("stdin", "expected"):
            value = case.get(key)
            if not isinstance(value, str):
                raise BadRequest(f"{where}.{key} (a string) is required", request_id)
            texts.append(_encode(value))
        total += sum(len(t) for t in texts)
        if total > sources.max_stdin_bytes:
            raise BadRequest(
                f"the cases' stdin and expected texts are larger than this server's maximum "
                f"({sources.max_stdin_bytes} bytes in all)", request_id)
        name = case.get("name")
        if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= MAX_CASE_NAME
                                 or not name.isprintable()):
            raise BadRequest(f"{where}.name must be a string of 1-{MAX_CASE_NAME} printable "
                             "characters", request_id)
        out.append(Case(texts[0], texts[1], name))
    return tuple(out)


def _shape(obj: dict[str, Any]) -> str:
    """How a fmt request's files came, so its answer comes back alike."""
    code = obj.get("code")
    if code is None:
        return "files"
    if not txtar.is_archive(code):
        return "code"
    return "txtar-head" if txtar.head_is_main(code) else "txtar"


def _control(obj: dict[str, Any], kind: str, target: str | None, allowed: set[str]) -> Control:
    """A stdin or cancel line.  Its errors carry ``id`` null and the target in ``for_id``:
    the named request is still running and must not look finished."""
    if target is None:
        raise BadRequest(f"a {kind!r} line needs the 'id' of a running request")

    def refuse(message: str) -> BadRequest:
        return BadRequest(message, None, for_id=target, for_type=kind)

    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise refuse(f"unknown field {unknown[0]!r} for a {kind!r} line")
    if kind == "cancel":
        return Control(kind, target)
    data = obj.get("data", "")
    if not isinstance(data, str):
        raise refuse("field 'data' must be a string")
    eof = obj.get("eof", False)
    if not isinstance(eof, bool):
        raise refuse("field 'eof' must be true or false")
    if not data and not eof:
        raise refuse("a 'stdin' line needs 'data' or \"eof\": true")
    return Control(kind, target, _encode(data), eof)


def _flag(obj: dict[str, Any], name: str, request_id: str | None) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"field {name!r} must be true or false", request_id)
    return value


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _object(pairs: list[tuple[str, Any]], duplicates: list[str]) -> dict[str, Any]:
    """A JSON object; a key seen twice is noted in ``duplicates``."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            duplicates.append(key)
        obj[key] = value
    return obj


def _request_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise BadRequest(f"field 'id' must be a string of 1-{MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise BadRequest("field 'id' must hold printable characters only")
    return value


def _files(
    obj: dict[str, Any], request_id: str | None, sources: SourceLimits
) -> dict[str, bytes]:
    code, files = obj.get("code"), obj.get("files")
    if code is not None and files is not None:
        raise BadRequest("give either 'code' or 'files', not both", request_id)
    if code is None and files is None:
        raise BadRequest("field 'code' is required", request_id)
    if code is not None:
        if not isinstance(code, str):
            raise BadRequest("field 'code' must be a string", request_id)
        try:
            files = txtar.split(code) if txtar.is_archive(code) else {"main.go": code}
        except txtar.TxtarError as e:
            raise BadRequest(str(e), request_id) from None
    if not isinstance(files, dict) or not files:
        raise BadRequest("field 'files' must be a non-empty object of name: text", request_id)
    if len(files) > sources.max_files:
        raise BadRequest(
            f"too many files: {len(files)} (at most {sources.max_files})", request_id
        )
    out: dict[str, bytes] = {}
    total = 0
    for name, text in files.items():
        check_file_name(name, request_id)
        if not isinstance(text, str):
            raise BadRequest(f"file {name!r} must be a string", request_id)
        data = _encode(text)
        total += len(data)
        if total > sources.max_bytes:
            raise BadRequest(
                f"the source is larger than this server's maximum ({sources.max_bytes} bytes)",
                request_id,
            )
        out[name] = data
    _check_no_clash(out, request_id)
    return out


def _check_no_clash(files: dict[str, bytes], request_id: str | None) -> None:
    """Refuse ``a`` next to ``a/b.go``: one name cannot be a file and a directory at once."""
    dirs = {"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)}
    for name in files:
        if name in dirs:
            raise BadRequest(f"file name {name!r} is both a file and a directory", request_id)


def check_file_name(name: Any, request_id: str | None = None) -> None:
    """Refuse any name that is not a plain relative path inside the source tree."""
    if not isinstance(name, str) or not name:
        raise BadRequest("file names must be non-empty strings", request_id)
    parts = name.split("/")
    if len(parts) > MAX_FILE_DEPTH:
        raise BadRequest(f"file name {name!r} is nested too deeply", request_id)
    for part in parts:
        if part in ("", ".", "..") or not FILE_PART.match(part):
            raise BadRequest(
                f"file name {name!r} is not allowed: use relative names of A-Z a-z 0-9 . _ + -"
                " with no '..', no empty parts and no leading '/'",
                request_id,
            )


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_NESTING:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level
