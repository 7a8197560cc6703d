"""The go.dev/play API (golang/playground's ``/compile``, ``/fmt``, ``/vet``, ``/version``), so
its front end and the tools written for it work against sandboxd unchanged.

Requests: form fields (``body``, ``withVet``, ``version=2``; ``imports`` for ``/fmt``) or,
as the Playground also takes, a JSON body ``{"Body": …, "WithVet": …}``.  Each is run as the
line protocol's ``run``/``vet``/``fmt`` request through ``sandboxd.jobs.submit`` and answered at its
end in the Playground's shapes:

- ``/compile``: ``{"Errors", "Events": [{"Message", "Kind", "Delay"}], "Status", "IsTest",
  "TestsFailed", "VetErrors"?, "VetOK"?}`` — ``Errors`` is the cleaned compiler output (the
  main file named ``prog.go``, as the Playground names it: ``./prog.go:4:2: …``) or the
  Playground's ``timeout running program``; ``Events`` the program's output in order, with
  ``Delay`` the nanoseconds since the previous event.  As on go.dev/play, the program is built
  with the fake clock (a ``"faketime": true`` run: it starts at 2009-11-10 23:00:00 UTC, sleeps
  cost nothing) and ``Delay`` is the fake time between its writes, to the nanosecond;
  ``Status`` the exit status.  ``withVet``: ``go vet`` runs first; its findings are
  ``VetErrors`` and ``VetOK`` says it found nothing.
- ``/vet``: ``{"Errors": findings, …}`` (the same shape, the rest zero).
- ``/fmt``: ``{"Body": formatted, "Error": ""}`` or ``{"Body": "", "Error": "prog.go:3:1: …"}``;
  a txtar body is formatted file by file (``.go`` files, ``go.mod`` files) and given back in
  its shape; a non-empty ``imports`` runs goimports (the line protocol's ``imports``).
- ``/version``: ``{"Version", "Release", "Name"}`` of the default toolchain.

A request the daemon refuses (a source too big, bad file names) gets its message in
``Errors`` (``Error`` for ``/fmt``), with 200, as the Playground answers a bad archive; a
failure of the server is a 500 with a JSON error.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from sandboxd.golang import gotest
from sandboxd.golang.playback import EPOCH_NS
from sandboxd.web.errors import refuse
from sandboxd.web.stream import channel_client
from sandboxd.wire import txtar
from sandboxd.wire.events import escape_json_text
from sandboxd.wire.request import BadRequest, parse_line

if TYPE_CHECKING:
    from sandboxd.wire.connection import ConnectionFactory

log = Logger()

BUILD_TIMEOUT = "timeout running go build\n"  # the Playground's words
RUN_TIMEOUT = "timeout running program"
DIAGNOSTIC = re.compile(r"^((?:[\w.+-]+/)*[\w.+-]+\.go):(\d+)", re.MULTILINE)


def playground_names(text: str, testing: bool = False, dot_slash: bool = True) -> str:
    """sandboxd's ``main.go:4:2: …`` as the Playground says it: ``./prog.go:4:2: …``."""
    main = "prog_test.go" if testing else "prog.go"

    def rename(m: re.Match[str]) -> str:
        name = main if m.group(1) in ("main.go", "main_test.go") else m.group(1)
        return f"{'./' if dot_slash else ''}{name}:{m.group(2)}"

    return DIAGNOSTIC.sub(rename, text)


def _field(request: Any, name: str) -> str | None:
    values = request.args.get(name.encode())
    if values:
        return values[0].decode("utf-8", "replace")
    return None


def _playground_request(request: Any) -> tuple[str, bool]:
    """(body, withVet) from the form, or from a JSON body as the Playground also takes."""
    body = _field(request, "body")
    if body:
        return body, (_field(request, "withVet") or "").lower() in ("1", "t", "true")
    content = request.content.read()
    try:
        obj = json.loads(content)
    except ValueError:
        raise BadRequest("no program: send the form field body (or a JSON body "
                         "{\"Body\": \"…\"})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("Body", ""), str):
        raise BadRequest("a JSON body is {\"Body\": \"…\", \"WithVet\": false}")
    return obj.get("Body", ""), obj.get("WithVet") is True


class _Collected:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    @property
    def final(self) -> dict[str, Any]:
        return self.events[-1]

    def text(self, phase: str) -> str:
        return "".join(e["output"] for e in self.events
                       if not e.get("done") and e.get("phase") == phase)


class PlayResource(resource.Resource):
    isLeaf = True
    kind = "run"

    def __init__(self, factory: ConnectionFactory) -> None:
        super().__init__()
        self.factory = factory

    def render_POST(self, request: Any) -> Any:
        try:
            body, with_vet = _playground_request(request)
        except BadRequest as e:
            return refuse(request, 400, e.message)
        if self.factory.shutting_down:
            return refuse(request, 503, "the server is shutting down")
        d = defer.ensureDeferred(self.answer(body, with_vet, request))
        d.addCallbacks(lambda answer: self._write(request, answer),
                       lambda failure: self._failed(request, failure))
        return server.NOT_DONE_YET

    def _write(self, request: Any, answer: dict[str, Any] | None) -> None:
        if request.gone or answer is None:
            return
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(answer_bytes(answer))
        request.finish()

    def _failed(self, request: Any, failure: Any) -> None:
        log.failure("a go.dev/play request", failure)
        if not request.gone:
            request.write(refuse(request, 500, "internal error"))
            request.finish()

    async def run(self, line: dict[str, Any], request: Any) -> _Collected:
        """Run one line-protocol request to its end; cancelled if the client goes away."""
        collected = _Collected()
        if request.gone:  # gone during an earlier step: nothing more runs for it
            collected.events.append({"done": True, "status": "cancelled",
                                     "message": "the client disconnected"})
            return collected
        factory = self.factory
        runtime = factory.runtime
        try:
            parsed = parse_line(json.dumps(line).encode(), factory.policy, factory.sources,
                                runtime.toolchains if runtime is not None else ())
        except BadRequest as e:
            collected.events.append({"done": True, "status": "bad_request",
                                     "message": e.message})
            return collected
        handle = factory.requests.submit(parsed, collected, channel_client(factory, request))
        request.notifyFinish().addErrback(
            lambda _: handle.cancel("the client disconnected"))
        await handle.start()
        return collected

    async def answer(self, body: str, with_vet: bool, request: Any) -> dict[str, Any] | None:
        raise NotImplementedError


def _files_of(body: str) -> dict[str, bytes]:
    try:
        files = txtar.split(body) if txtar.is_archive(body) else {"main.go": body}
    except txtar.TxtarError:
        return {}
    return {name: text.encode() for name, text in files.items()}


def _response(**fields: Any) -> dict[str, Any]:
    answer = {"Errors": "", "Events": None, "Status": 0, "IsTest": False, "TestsFailed": 0}
    answer.update(fields)
    return answer


def _refused(final: dict[str, Any]) -> str | None:
    """The Playground's ``Errors`` for a request that did not get to run its program."""
    status = final["status"]
    if status == "timeout":
        return BUILD_TIMEOUT if final.get("phase") == "build" else RUN_TIMEOUT
    if status in ("bad_request", "queue_full", "build_limit", "internal_error", "cancelled"):
        return final["message"]
    return None


def events_of(collected: _Collected) -> list[dict[str, Any]] | None:
    """The run's output as the Playground's events: in order, consecutive chunks of one stream
    read in the same millisecond merged, ``Delay`` the nanoseconds since the previous one."""
    final = collected.final
    run = [e for e in collected.events if not e.get("done") and e.get("phase") == "run"
           and e.get("output")]
    if not run:
        return None
    if "fake_time_ns" in run[0]:
        return _fake_events(run)
    wall = final.get("wall_ms") or 0
    previous = int(final["timestamp"]) - wall if wall else int(run[0]["timestamp"])
    events: list[dict[str, Any]] = []
    for e in run:
        at = int(e["timestamp"])
        delay = max(at - previous, 0) * 1_000_000
        if events and events[-1]["Kind"] == e["stream"] and delay == 0:
            events[-1]["Message"] += e["output"]
            continue
        events.append({"Message": e["output"], "Kind": e["stream"], "Delay": delay})
        previous = max(at, previous)
    return events


def _fake_events(run: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A faketime run's events as golang/playground's ``Recorder.Events``: ``Delay`` the fake
    nanoseconds since the previous event, one stream's events at one time merged."""
    now = EPOCH_NS
    events: list[dict[str, Any]] = []
    for e in run:
        at = int(e.get("fake_time_ns", now))
        delay = max(at - now, 0)
        if events and events[-1]["Kind"] == e["stream"] and delay == 0:
            events[-1]["Message"] += e["output"]
            continue
        events.append({"Message": e["output"], "Kind": e["stream"], "Delay": delay})
        now = max(at, now)
    return events


class Compile(PlayResource):
    async def answer(self, body: str, with_vet: bool, request: Any) -> dict[str, Any] | None:
        testing = gotest.wants_tests(_files_of(body))
        vet_errors = ""
        if with_vet:
            vet = await self.run({"type": "vet", "code": body}, request)
            if vet.final["status"] == "vet_issues":
                vet_errors = playground_names(vet.text("build"), testing)
        ran = await self.run({"type": "run", "code": body, "faketime": True}, request)
        final = ran.final
        status = final["status"]
        if status == "compile_error":
            return _response(Errors=playground_names(ran.text("build"), testing))
        refused = _refused(final)
        answer = _response(
            Events=events_of(ran),
            Status=final.get("exit_code") or (0 if status == "ok" else 1),
            IsTest="tests_failed" in final or testing,
            TestsFailed=final.get("tests_failed", 0),
        )
        if refused is not None:
            answer["Errors"] = refused
        if status in ("memory_limit", "output_limit"):
            answer["Errors"] = final["message"]
        if vet_errors:
            answer["VetErrors"] = vet_errors
        elif with_vet:
            answer["VetOK"] = True
        return answer


class Vet(PlayResource):
    async def answer(self, body: str, with_vet: bool, request: Any) -> dict[str, Any] | None:
        vet = await self.run({"type": "vet", "code": body}, request)
        final = vet.final
        if final["status"] in ("ok", "vet_issues", "compile_error"):
            return _response(Errors=playground_names(vet.text("build")))
        return _response(Errors=_refused(final) or final["message"])


class Fmt(PlayResource):
    """golang/playground's fmt.go: the body (txtar included) formatted file by file, with
    goimports when the form field ``imports`` is not empty (as ``r.FormValue("imports") != ""``);
    the first error, named as the Playground names it."""

    async def answer(self, body: str, with_vet: bool, request: Any) -> dict[str, Any] | None:
        line: dict[str, Any] = {"type": "fmt", "code": body}
        if _field(request, "imports"):
            line["imports"] = True
        done = await self.run(line, request)
        final = done.final
        if final["status"] == "ok":
            return {"Body": final["code"], "Error": ""}
        said = done.text("build")
        if not said:
            return {"Body": "", "Error": final["message"]}
        if not txtar.is_archive(body) or txtar.head_is_main(body):  # the Playground's prog.go
            said = re.sub(r"^main\.go:", "prog.go:", said, flags=re.MULTILINE)
        return {"Body": "", "Error": fmt_error(said)}


def fmt_error(said: str) -> str:
    """sandboxd's fmt errors (gofmt's lines) as the Playground's one error string: a Go file's
    errors are a go/scanner ErrorList (``first (and N more errors)``), go.mod's are modfile's
    (joined by newlines)."""
    lines = said.strip("\n").split("\n")
    first = lines[0]
    if len(lines) > 1 and re.match(r"^[^:]+\.go:", first):
        return f"{first} (and {len(lines) - 1} more errors)"
    return "\n".join(lines)


class GoVersion(resource.Resource):
    isLeaf = True

    def __init__(self, factory: ConnectionFactory) -> None:
        super().__init__()
        self.factory = factory

    def render_GET(self, request: Any) -> bytes:
        version = self.factory.runtime.toolchain.version  # e.g. go1.27.3
        release = ".".join(version.split(".")[:2])
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"Version": version, "Release": release,
                           "Name": f"Go {release.removeprefix('go')}"}).encode()


def play_resources(factory: ConnectionFactory) -> dict[bytes, resource.Resource]:
    return {b"compile": Compile(factory), b"fmt": Fmt(factory), b"vet": Vet(factory),
            b"version": GoVersion(factory)}


def answer_bytes(answer: dict[str, Any]) -> bytes:
    """A go.dev/play answer as JSON, with control characters (C0, DEL, C1) and U+2028/U+2029
    as escapes, as on the line protocol: a program's output is in ``Events``."""
    return escape_json_text(json.dumps(answer, ensure_ascii=False)).encode("utf-8")
