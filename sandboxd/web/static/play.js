// The sandboxd playground: one WebSocket (/v1/ws) carrying the line protocol (docs/protocol.md).
(function () {
  "use strict";
  var SAMPLE = 'package main\n\nimport (\n\t"fmt"\n\t"time"\n)\n\nfunc main() {\n\tfor i := 0; i < 3; i++ {\n\t\tfmt.Println("Hello", i)\n\t\ttime.Sleep(time.Second)\n\t}\n}\n';
  var $ = function (id) { return document.getElementById(id); };
  var out = $("output"), statusBox = $("status"), stdin = $("stdin");
  var editor = CodeMirror.fromTextArea($("code"), {
    mode: "text/x-go", lineNumbers: true, indentUnit: 4, tabSize: 4, indentWithTabs: true,
    matchBrackets: true, autoCloseBrackets: true, autofocus: true,
    extraKeys: {
      "Ctrl-Enter": function () { start("run"); }, "Cmd-Enter": function () { start("run"); },
      "Tab": function (cm) {
        if (cm.somethingSelected()) cm.indentSelection("add"); else cm.replaceSelection("\t", "end");
      },
      "Shift-Tab": function (cm) { cm.indentSelection("subtract"); }
    }
  });
  editor.setValue(localStorage.getItem("sandboxd.code") || SAMPLE);
  editor.on("change", function () { localStorage.setItem("sandboxd.code", editor.getValue()); });
  window.sandboxdEditor = editor;

  var session = sessionStorage.getItem("sandboxd.session") ||
      "page-" + Math.random().toString(36).slice(2, 12);
  sessionStorage.setItem("sandboxd.session", session);
  $("session").checked = localStorage.getItem("sandboxd.useSession") === "1";
  $("session").onchange = function () { localStorage.setItem("sandboxd.useSession", this.checked ? "1" : "0"); };

  var ws = null, queue = [], current = null, counter = 0, errorLines = [];

  function connect() {
    if (ws && ws.readyState <= 1) return ws;
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws");
    ws.onopen = function () {
      $("conn").textContent = "connected";
      send({type: "version", id: "version"});
      while (queue.length) ws.send(queue.shift());
    };
    ws.onclose = function () {
      $("conn").textContent = "disconnected";
      if (current) finish({status: "cancelled", message: "the connection to the server was lost", is_error: true});
    };
    ws.onmessage = function (m) { receive(JSON.parse(m.data)); };
    return ws;
  }
  function send(obj) {
    var text = JSON.stringify(obj);
    if (connect().readyState === 1) ws.send(text); else queue.push(text);
  }

  function clearMarks() {
    errorLines.forEach(function (h) { editor.removeLineClass(h, "background", "error-line"); });
    errorLines = [];
  }
  function append(text, cls) {
    var span = document.createElement("span");
    span.className = cls;
    if (cls.indexOf("build") >= 0) {
      // main.go:9:7: … (or lib/x.go:3:1: of a "-- lib/x.go --" section) links to its line
      var re = /(^|\n)((?:\.\/)?([\w.+\/-]+\.go)):(\d+)(?::(\d+))?/g, last = 0, m;
      while ((m = re.exec(text)) !== null) {
        var start = fileStart(m[3]);
        if (start < 0) continue;
        var at = m.index + m[1].length, line = start + parseInt(m[4], 10) - 1;
        span.appendChild(document.createTextNode(text.slice(last, at)));
        var a = document.createElement("a");
        a.className = "diag";
        a.textContent = m[0].slice(m[1].length);
        a.dataset.line = String(line + 1); a.dataset.col = m[5] || "1";
        a.onclick = jump;
        span.appendChild(a);
        errorLines.push(editor.addLineClass(line, "background", "error-line"));
        last = at + a.textContent.length;
      }
      span.appendChild(document.createTextNode(text.slice(last)));
    } else {
      span.textContent = text;
    }
    var atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.appendChild(span);
    if (atBottom) out.scrollTop = out.scrollHeight;
  }
  // Where a file of the editor's text starts: main.go (or prog.go) at the top, any other
  // after its "-- name --" line (the Playground's several-files form); -1 if it is not there.
  function fileStart(name) {
    name = name.replace(/^\.\//, "");
    var lines = editor.getValue().split("\n");
    for (var i = 0; i < lines.length; i++) {
      var marker = /^-- (.+?) --[ \t]*$/.exec(lines[i]);
      if (marker && marker[1].trim() === name) return i + 1;
    }
    return /^(main|prog)(_test)?\.go$/.test(name) ? 0 : -1;
  }
  function jump(e) {
    e.preventDefault();
    var line = parseInt(this.dataset.line, 10) - 1, col = parseInt(this.dataset.col, 10) - 1;
    editor.focus();
    editor.setCursor({line: line, ch: col});
    editor.scrollIntoView({line: line, ch: col}, 60);
  }

  function busy(on) {
    ["run", "fmt", "vet", "test"].forEach(function (id) { $(id).disabled = on; });
    $("cancel").disabled = !on;
    stdin.disabled = $("eof").disabled = !(on && current && current.kind !== "fmt" && current.kind !== "vet");
    if (on && !stdin.disabled) stdin.focus();
  }

  function start(kind) {
    if (current) return;
    var id = kind + "-" + (++counter);
    var req = {type: kind === "test" ? "run" : kind, id: id, code: editor.getValue()};
    var go = $("toolchain").value;
    if (go) req.go = go;
    if (kind === "run" || kind === "test") {
      req.interactive = true;
      if (kind === "test") req.test = true;
      if ($("session").checked) req.session_id = session;
    }
    current = {id: id, kind: kind, started: performance.now()};
    out.textContent = "";
    clearMarks();
    statusBox.className = "status";
    statusBox.textContent = {run: "running…", test: "testing…", fmt: "formatting…", vet: "vetting…"}[kind];
    busy(true);
    send(req);
  }

  function receive(ev) {
    if (ev.id === "version" && ev.done) {
      var sel = $("toolchain");
      sel.innerHTML = "";
      Object.keys(ev.go || {}).forEach(function (name) {
        var o = document.createElement("option");
        o.value = name === ev.default_go ? "" : name;
        o.textContent = name + " (" + ev.go[name] + ")";
        if (name === ev.default_go) o.selected = true;
        sel.appendChild(o);
      });
      $("conn").textContent = "sandboxd " + ev.sandboxd;
      return;
    }
    if (!current) return;
    if (ev.done && ev.id === null && ev.for_id === current.id) {  // a refused stdin/cancel line
      append("[" + ev.message + "]\n", "system");
      return;
    }
    if (ev.id !== current.id) return;
    if (!ev.done) {
      append(ev.output, ev.stream + (ev.phase === "build" ? " build" : ""));
      return;
    }
    finish(ev);
  }

  function finish(ev) {
    var kind = current && current.kind;
    if (kind === "fmt" && ev.status === "ok" && typeof ev.code === "string") {
      var cursor = editor.getCursor();
      if (ev.changed) { editor.setValue(ev.code); editor.setCursor(cursor); }
    }
    var parts = [ev.status + ": " + ev.message];
    if (ev.time_ms != null) parts.push(ev.time_ms + " ms CPU");
    if (ev.wall_ms != null) parts.push(ev.wall_ms + " ms wall");
    if (ev.memory_kb != null) parts.push((ev.memory_kb / 1024).toFixed(1) + " MiB");
    if (ev.build_ms != null) parts.push("built in " + ev.build_ms + " ms");
    if (ev.cached) parts.push("cached build");
    if (ev.tests_passed != null) parts.push(ev.tests_passed + " passed, " + ev.tests_failed + " failed");
    if (ev.go && typeof ev.go === "string") parts.push(ev.go);
    statusBox.textContent = parts.join(" · ");
    statusBox.className = "status " + (ev.is_error ? "err" : "ok");
    current = null;
    busy(false);
  }

  $("run").onclick = function () { start("run"); };
  $("fmt").onclick = function () { start("fmt"); };
  $("vet").onclick = function () { start("vet"); };
  $("test").onclick = function () { start("test"); };
  $("cancel").onclick = function () { if (current) send({type: "cancel", id: current.id}); };
  $("stdin-form").onsubmit = function (e) {
    e.preventDefault();
    if (!current) return;
    send({type: "stdin", id: current.id, data: stdin.value + "\n"});
    append(stdin.value + "\n", "system");
    stdin.value = "";
  };
  $("eof").onclick = function () { if (current) send({type: "stdin", id: current.id, eof: true}); };
  connect();
})();
