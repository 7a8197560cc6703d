"""The formatter's pure parts: which files it formats, the box's answer, its errors named as the
request named the files, and the archive given back in the shape it came in (golang/playground's
fmt_test.go shapes; the formatting itself is tests/system/test_fmt.py's)."""

from __future__ import annotations

import json

import pytest

from sandboxd.golang import formatter
from sandboxd.limits import LimitPolicy
from sandboxd.wire import txtar
from sandboxd.wire.request import parse_line


@pytest.mark.parametrize(("name", "formats"), [
    ("main.go", True), ("sub/x.go", True), ("go.mod", True), ("a/go.mod", True),
    ("go.sum", False), ("notes.txt", False), ("x.go.txt", False), ("xgo.mod", False),
])
def test_which_files_are_formatted(name, formats):
    assert formatter.formats(name) is formats


def test_the_answer_is_read_file_by_file():
    answer = formatter.read_answer(b"0 3\nabc1 0\n2 2\n\n\n", 3)
    assert (answer.files, answer.failed) == ([b"abc", b"", b"\n\n"], None)
    answer = formatter.read_answer(b"0 1\nxfailed 1\n", 3)
    assert (answer.files, answer.failed) == ([b"x"], 1)


@pytest.mark.parametrize(("stdout", "count"), [
    (b"", 1), (b"0 9\nshort", 1), (b"1 1\nx", 1), (b"0 1\nx", 2), (b"0 1\nxy", 1),
    (b"-1 0\n", 1), (b"0 x\n", 1), (b"failed 0 1\n", 1), (b"failed 1\n", 2),
])
def test_an_answer_that_does_not_add_up_is_refused(stdout, count):
    with pytest.raises(formatter.FormatterError):
        formatter.read_answer(stdout, count)


def test_errors_name_the_file_as_the_request_did():
    said = "<standard input>:1:9: expected 'IDENT', found 123\n<standard input>:2:1: more\n"
    assert formatter.error_text(said, "dir/one.go") == (
        "dir/one.go:1:9: expected 'IDENT', found 123\ndir/one.go:2:1: more\n")
    said = "go: errors parsing go.mod:\n/tmp/fmt.mod/go.mod:1: unknown directive: 123\n"
    assert formatter.error_text(said, "b/go.mod") == "b/go.mod:1: unknown directive: 123\n"


@pytest.mark.parametrize(("text", "head"), [
    ("package main\n-- two.go --\n", True),
    ("\n\n-- main.go --\npackage main\n", False),
    ("-- go.mod --\nmodule m\n", False),
])
def test_head_is_main_when_text_comes_before_the_first_marker(text, head):
    assert txtar.head_is_main(text) is head


def test_join_gives_the_archive_back_as_txtar_formats_it():
    files = {"main.go": b"package main\n", "two.go": b"package main", "empty.txt": b""}
    assert txtar.join(files, head=True) == (
        b"package main\n-- two.go --\npackage main\n-- empty.txt --\n")
    assert txtar.join(files, head=False) == (
        b"-- main.go --\npackage main\n-- two.go --\npackage main\n-- empty.txt --\n")
    text = "package main\n-- a/go.mod --\nmodule a\n-- b.txt --\n  as  is  \n\n"
    split = {name: data.encode() for name, data in txtar.split(text).items()}
    assert txtar.join(split, txtar.head_is_main(text)).decode() == text


@pytest.mark.parametrize(("fields", "shape", "files"), [
    ({"code": "package main\n"}, "code", ["main.go"]),
    ({"code": "package main\n-- go.mod --\nmodule m\n"}, "txtar-head", ["main.go", "go.mod"]),
    ({"code": "\n-- a.go --\nx\n-- b/go.mod --\n"}, "txtar", ["a.go", "b/go.mod"]),
    ({"files": {"go.mod": "module m", "x.go": ""}}, "files", ["go.mod", "x.go"]),
])
def test_a_fmt_request_keeps_the_shape_it_came_in(fields, shape, files):
    request = parse_line(json.dumps({"type": "fmt", **fields}).encode(), LimitPolicy())
    assert (request.shape, list(request.files)) == (shape, files)
    assert request.archive == (fields["code"].encode() if shape.startswith("txtar") else b"")
