"""sandboxd's HTTP face (``--http ENDPOINT``): the line protocol over HTTP and WebSocket, the
go.dev/play API, and a playground page.

- ``site``: the ``twisted.web`` site: which path is served by what, and the checks every
  request passes first (``Host``, ``Origin``, body size, connection count).
- ``stream``: ``POST /v1/run|fmt|vet`` (one line-protocol request in, its events out as
  NDJSON, live), ``GET /v1/version``.
- ``lines``: what a WebSocket connection does with each message (``/v1/ws``): the line
  protocol's pipelining, ``stdin`` and ``cancel``.
- ``play``: ``POST /compile``, ``/fmt``, ``/vet``, ``GET /version`` in go.dev/play's shapes.
- ``static/``: the playground page and its editor (CodeMirror 5, vendored).

Every request is run through ``sandboxd.jobs.submit.Requests``, as the line protocol's are.
"""
