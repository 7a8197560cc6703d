"""Events: program bytes become JSON text without losing or splitting a character."""

from __future__ import annotations

import base64
import json

import pytest

from sandboxd.status import Phase, Status
from sandboxd.wire.events import StreamDecoder, encode, final_event, output_event


def feed_all(chunks: list[bytes]) -> tuple[str, bytes]:
    """Text and exact bytes as a client would rebuild them from the events."""
    decoder = StreamDecoder()
    text, raw = [], []
    for chunk in [*chunks, None]:
        t, r = decoder.feed(chunk) if chunk is not None else decoder.flush()
        text.append(t)
        raw.append(r if r is not None else t.encode("utf-8"))
    return "".join(text), b"".join(raw)


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_a_character_split_across_reads_is_held_until_whole(char):
    data = char.encode()
    for cut in range(1, len(data)):
        decoder = StreamDecoder()
        first = decoder.feed(b"a" + data[:cut])
        assert first == ("a", None)  # nothing broken is sent
        assert decoder.feed(data[cut:] + b"b") == (char + "b", None)


def test_a_four_byte_character_in_four_reads():
    decoder = StreamDecoder()
    data = "😀".encode()
    got = [decoder.feed(data[i:i + 1]) for i in range(4)]
    assert got == [("", None), ("", None), ("", None), ("😀", None)]


def test_invalid_bytes_become_replacement_characters_with_exact_base64():
    decoder = StreamDecoder()
    text, raw = decoder.feed(b"ok \xff\xfe end\n")
    assert text == "ok \ufffd\ufffd end\n"
    assert raw == b"ok \xff\xfe end\n"


def test_bytes_that_can_never_start_a_character_are_not_held_back():
    for bad in (b"\xff", b"\xfe", b"\xf8", b"\xc0", b"\xc1", b"\xf5"):
        decoder = StreamDecoder()
        assert decoder.feed(b"x" + bad) == ("x\ufffd", b"x" + bad)


def test_a_lone_continuation_byte_is_invalid_at_once():
    assert StreamDecoder().feed(b"a\x80") == ("a\ufffd", b"a\x80")


def test_an_unfinished_character_at_the_end_is_flushed_as_invalid():
    decoder = StreamDecoder()
    assert decoder.feed(b"a\xe2\x82") == ("a", None)
    assert decoder.flush() == ("\ufffd", b"\xe2\x82")
    assert decoder.flush() == ("", None)


def test_random_chunking_never_changes_the_bytes():
    data = "héllo €uro 😀\n".encode() + b"\xff\x00\r\n" + "ünï".encode()
    for size in range(1, 6):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        text, raw = feed_all(chunks)
        assert raw == data
        assert text == data.decode("utf-8", "replace")


def test_output_event_fields():
    e = output_event("r1", "stdout", Phase.RUN, "hi\n", timestamp="1700000000000")
    assert e == {
        "id": "r1", "stream": "stdout", "phase": "run", "output": "hi\n", "exec_err": "",
        "is_error": False, "timestamp": "1700000000000",
    }
    err = output_event("r1", "stderr", Phase.BUILD, "x")
    assert err["is_error"] is True and err["phase"] == "build" and err["timestamp"].isdigit()


def test_output_event_with_raw_bytes_carries_base64():
    e = output_event("r", "stdout", Phase.RUN, "\ufffd", b"\xff")
    assert base64.b64decode(e["output_base64"]) == b"\xff"


def test_encode_is_one_line_of_utf8_json_and_escapes_control_characters():
    line = encode(output_event("r", "stdout", Phase.RUN, "a\nb\x00c\rd é", timestamp="1"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert b"\\n" in line and b"\\u0000" in line and b"\\r" in line
    assert "é".encode() in line  # UTF-8 as is, not \\u escapes
    assert json.loads(line)["output"] == "a\nb\x00c\rd é"


def test_final_event_fields_for_success():
    e = final_event("r", Status.OK, "the program exited normally", Phase.RUN,
                    exit_code=0, time_ms=3, wall_ms=5, memory_kb=1024)
    assert e["done"] is True and e["status"] == "ok" and e["phase"] == "run"
    assert (e["exit_code"], e["time_ms"], e["wall_ms"], e["memory_kb"]) == (0, 3, 5, 1024)
    assert e["is_error"] is False and e["exec_err"] == "" and e["output"] == ""
    assert e["message"] == "the program exited normally" and e["timestamp"].isdigit()


def test_final_event_for_an_error_has_the_message_in_exec_err_and_nulls():
    e = final_event(None, Status.BAD_REQUEST, "empty line", Phase.QUEUE)
    assert e["id"] is None and e["status"] == "bad_request" and e["phase"] == "queue"
    assert e["is_error"] is True and e["exec_err"] == "empty line"
    assert e["exit_code"] is None and e["time_ms"] is None and e["wall_ms"] is None
    assert e["memory_kb"] is None and e["signal"] is None and e["build_ms"] is None
    assert e["cached"] is False and e["output_bytes"] == 0


def test_every_status_but_ok_is_an_error():
    assert [s for s in Status if not s.is_error] == [Status.OK]


def test_encode_escapes_del_c1_and_line_separators_and_nothing_else():
    text = "a\x7fb\x80c\x85d\x9be\x9ff\u2028g\u2029h\x1bi é€😀\u00a0\u202e\"\\/"
    event = output_event("r", "stdout", Phase.RUN, text, timestamp="1")
    line = encode(event)
    for escape in (b"\\u007f", b"\\u0080", b"\\u0085", b"\\u009b", b"\\u009f", b"\\u2028",
                   b"\\u2029", b"\\u001b"):
        assert escape in line, escape
    body = line[:-1]
    assert all(byte >= 0x20 and byte != 0x7F for byte in body)
    assert not any(0x80 <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in body.decode())
    assert json.loads(line) == event  # the escapes decode back to the same text
    # Everything else byte for byte as before: compact, non-ASCII (NBSP, RLO, emoji) as is.
    plain = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    for c in "\x7f\x80\x85\x9b\x9f\u2028\u2029":
        plain = plain.replace(c, f"\\u{ord(c):04x}")
    assert line == plain.encode() + b"\n"
    assert "é€😀\u00a0\u202e".encode() in line


def test_encode_escapes_them_in_every_field_and_key():
    line = encode({"id": None, "message": "x\x9by", "for_id": "\u2028", "k\x85": "v"})
    assert b"\\u009b" in line and b"\\u2028" in line and b"k\\u0085" in line
    assert json.loads(line) == {"id": None, "message": "x\x9by", "for_id": "\u2028", "k\x85": "v"}


def test_json_log_lines_escape_them_too():
    from twisted.logger import LogLevel

    from sandboxd.journal import event_as_json

    line = event_as_json({"log_format": "said {what}", "what": "a\x9b2Jb\u2028c\x1b",
                          "log_level": LogLevel.info, "log_namespace": "t", "log_time": 1.0})
    assert "\\u009b" in line and "\\u2028" in line and "\\u001b" in line
    assert not any(0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" or ord(c) < 0x20 for c in line)
    assert json.loads(line)["what"] == "a\x9b2Jb\u2028c\x1b"
    assert json.loads(line)["message"] == "said a\x9b2Jb\u2028c\x1b"
