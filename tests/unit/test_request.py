"""Request parsing: every way a line can be wrong gets a clear message; good lines run."""

from __future__ import annotations

import json

import pytest

from sandboxd.limits import DEFAULT_LIMITS, LimitPolicy
from sandboxd.wire.request import (
    MAX_ID_LENGTH,
    BadRequest,
    SourceLimits,
    check_file_name,
    parse_line,
)

POLICY = LimitPolicy()
CODE = "package main\n\nfunc main() {}\n"


def parse(obj: object, sources: SourceLimits | None = None):
    line = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return parse_line(line, POLICY, sources)


def refused(obj: object, sources: SourceLimits | None = None) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse(obj, sources)
    return info.value


# -- good requests ---------------------------------------------------------------------------


def test_the_original_sample_shape_is_a_run_request():
    req = parse({"code": CODE, "session_id": "user_1"})
    assert req.type == "run"
    assert req.files == {"main.go": CODE.encode()}
    assert req.session_id == "user_1"
    assert req.limits == DEFAULT_LIMITS


def test_client_id_is_kept():
    assert parse({"code": CODE, "id": "mine-1"}).id == "mine-1"


def test_missing_or_null_id_gets_a_fresh_server_id_each_time():
    ids = [parse({"code": CODE}).id, parse({"code": CODE}).id, parse({"code": CODE, "id": None}).id]
    assert len(set(ids)) == 3
    assert all(i.startswith("req-") and i[4:].isdigit() for i in ids)


def test_files_are_taken_as_utf8_bytes():
    req = parse({"files": {"main.go": CODE, "lib/util.go": "package lib // é\n"}})
    assert req.files["lib/util.go"] == "package lib // é\n".encode()


def test_crlf_and_surrounding_blanks_are_accepted():
    assert parse(b'  {"code": "x"}\r').files == {"main.go": b"x"}


def test_limits_are_resolved():
    req = parse({"code": CODE, "limits": {"wall_ms": 500}})
    assert req.limits.run.wall_ms == 500


# -- the line itself -------------------------------------------------------------------------


def test_invalid_utf8_line():
    e = refused(b'{"code": "\xff"}')
    assert "not valid UTF-8" in e.message and e.request_id is None


@pytest.mark.parametrize("line", [b"", b"   ", b"\r"])
def test_empty_line(line):
    assert refused(line).message == "empty line"


def test_not_json():
    assert "not valid JSON" in refused(b"{not json").message


def test_huge_integer_is_bad_json_not_a_crash():
    assert "not valid JSON" in refused(b'{"code": "x", "limits": {"wall_ms": 1' + b"0" * 5000
                                       + b"}}").message


def test_nesting_that_breaks_the_json_parser():
    assert "nested too deeply" in refused(b"[" * 200_000 + b"]" * 200_000).message


def test_nesting_past_our_own_bound_keeps_the_id():
    deep: object = 1
    for _ in range(20):
        deep = {"a": deep}
    e = refused({"id": "deep", "code": CODE, "limits": deep})
    assert "nested too deeply" in e.message and e.request_id == "deep"


@pytest.mark.parametrize(("line", "key", "request_id"), [
    (b'{"code": "a", "code": "b"}', "code", None),
    (b'{"id": "d1", "code": "package main", "code": "package main"}', "code", "d1"),
    (b'{"id": "d2", "files": {"main.go": "a", "main.go": "b"}}', "main.go", "d2"),
    (b'{"id": "d3", "code": "x", "limits": {"run": {"wall_ms": 10, "wall_ms": 99}}}',
     "wall_ms", "d3"),
    (b'{"id": "a", "id": "b", "code": "x"}', "id", None),  # which id is meant: neither
    (b'{"type": "cancel", "id": "r1", "type": "stdin"}', "type", "r1"),
])
def test_a_key_twice_in_one_object_is_refused(line, key, request_id):
    """Parsers disagree on which of two values wins (Python's json: the last), so a request
    with a key twice is refused rather than run with a guess."""
    e = refused(line)
    assert e.message == f"the key {key!r} appears twice in one object"
    assert e.request_id == request_id


@pytest.mark.parametrize(
    ("value", "kind"),
    [([], "an array"), ("x", "a string"), (True, "a boolean"), (None, "null"), (3, "a number"),
     (1.5, "a number")],
)
def test_not_an_object(value, kind):
    assert refused(value).message == f"a request must be a JSON object, not {kind}"


# -- id, type, fields ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [5, "", "x" * (MAX_ID_LENGTH + 1), ["a"], True])
def test_bad_id(bad):
    e = refused({"id": bad, "code": CODE})
    assert "field 'id'" in e.message and e.request_id is None


@pytest.mark.parametrize("bad", ["a\nb", "tab\there", "\x00", "\u200b"])
def test_id_with_unprintable_characters(bad):
    assert "printable" in refused({"id": bad, "code": CODE}).message


def test_longest_id_is_accepted():
    assert parse({"id": "x" * MAX_ID_LENGTH, "code": CODE}).id == "x" * MAX_ID_LENGTH


def test_type_must_be_a_string():
    e = refused({"id": "t", "type": 1, "code": CODE})
    assert e.message == "field 'type' must be a string" and e.request_id == "t"


def test_unknown_type_names_the_known_ones():
    e = refused({"id": "t", "type": "launch", "code": CODE})
    assert "unknown request type 'launch'" in e.message and "run" in e.message
    assert e.request_id == "t"


def test_unknown_field():
    e = refused({"id": "f", "code": CODE, "sesion_id": "typo"})
    assert e.message == "unknown field 'sesion_id' for a 'run' request" and e.request_id == "f"


def test_a_refused_request_without_an_id_has_none():
    for obj in ({"code": 5}, {"code": CODE, "session_id": "/"}, {"code": CODE, "limits": 1},
                {"type": "x"}, {"code": CODE, "what": 1}):
        assert refused(obj).request_id is None


# -- session ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["user_1", "a", "A.b-c_9", "9" * 64])
def test_good_session_ids(good):
    assert parse({"code": CODE, "session_id": good}).session_id == good


@pytest.mark.parametrize(
    "bad", ["", ".hidden", "-x", "_x", "a/b", "../a", "a b", "é", "x" * 65, "a\n"]
)
def test_bad_session_ids(bad):
    assert "field 'session_id' must be 1-64 characters" in refused(
        {"id": "s", "code": CODE, "session_id": bad}).message


@pytest.mark.parametrize("bad", [1, ["a"], {"a": 1}, True])
def test_session_id_must_be_a_string(bad):
    assert refused({"code": CODE, "session_id": bad}).message == (
        "field 'session_id' must be a string")


# -- code and files --------------------------------------------------------------------------


def test_code_or_files_is_required():
    assert refused({"id": "n"}).message == "field 'code' is required"


def test_not_both_code_and_files():
    assert "either 'code' or 'files'" in refused({"code": CODE, "files": {"a.go": ""}}).message


@pytest.mark.parametrize("bad", [1, ["x"], {"a": 1}, True])
def test_code_must_be_a_string(bad):
    assert refused({"code": bad}).message == "field 'code' must be a string"


@pytest.mark.parametrize("bad", [[], {}, "main.go", 3])
def test_files_must_be_a_non_empty_object(bad):
    assert "non-empty object" in refused({"files": bad}).message


def test_file_text_must_be_a_string():
    assert refused({"files": {"main.go": 1}}).message == "file 'main.go' must be a string"


def test_too_many_files():
    files = {f"f{i}.go": "" for i in range(3)}
    assert refused({"files": files}, SourceLimits(max_files=2)).message == (
        "too many files: 3 (at most 2)")


def test_source_size_is_counted_in_utf8_bytes():
    # 4 characters, 8 bytes: over a 6-byte bound.
    assert "larger than this server's maximum (6 bytes)" in refused(
        {"code": "éééé"}, SourceLimits(max_bytes=6)).message
    assert parse({"code": "ééé"}, SourceLimits(max_bytes=6)).files["main.go"] == "ééé".encode()


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../main.go", "a/../../x", "./main.go", "a//b", "a/", ".hidden", "a/.git",
     "..", ".", "a\\b", "a b.go", "main.go\x00", "é.go", "-flag.go", "a/b/c/d/e.go",
     "x" * 101, "C:main.go"],
)
def test_file_names_with_path_tricks_are_refused(name):
    e = refused({"id": "n", "files": {name: "package main"}})
    assert "file name" in e.message and e.request_id == "n"


@pytest.mark.parametrize("name", ["main.go", "go.mod", "a/b/c/d.go", "x_test.go", "v1.2+x.txt",
                                  "_x.go", "9.go"])
def test_plain_relative_names_are_accepted(name):
    check_file_name(name)


def test_a_name_that_is_both_a_file_and_a_directory_is_refused():
    # Otherwise writing the tree fails on the host: an internal error instead of a clear answer.
    for files in ({"a": "x", "a/b.go": "y"}, {"a/b.go": "y", "a": "x"},
                  {"lib/x/y.go": "", "lib/x": ""}):
        e = refused({"id": "d", "files": files})
        assert "both a file and a directory" in e.message and e.request_id == "d"


@pytest.mark.parametrize("bad", [None, 1, ""])
def test_check_file_name_refuses_non_names(bad):
    with pytest.raises(BadRequest):
        check_file_name(bad)


def test_limit_errors_become_bad_requests_with_the_id():
    e = refused({"id": "l", "code": CODE, "limits": {"run": {"wall_ms": 10**9}}})
    assert "above this server's maximum" in e.message and e.request_id == "l"
