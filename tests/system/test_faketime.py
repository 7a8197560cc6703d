"""Deterministic time (``"faketime": true``): the Go Playground's fake clock on a real daemon.

Real Go programs built with ``-tags=faketime`` in real boxes (both drivers) through a real
``twistd sandboxd``; the expected outputs are golang/playground's own (tests.go).
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from tests.harness import driver_missing, finals, go_main, output
from tests.httpface import exchange, http_daemon

NOW = go_main("\tfmt.Println(time.Now())", imports=("fmt", "time"))
# tests.go's faketime_write_interaction: the Playground's exact events.
WRITE_INTERACTION = go_main(
    '\tfmt.Fprintln(os.Stdout, "A")\n\tfmt.Fprintln(os.Stderr, "B")\n'
    '\tfmt.Fprintln(os.Stdout, "A")\n\tfmt.Fprintln(os.Stdout, "A")\n'
    '\ttime.Sleep(time.Second)\n\tfmt.Fprintln(os.Stderr, "B")\n'
    '\ttime.Sleep(time.Second)\n\tfmt.Fprintln(os.Stdout, "A")',
    imports=("fmt", "os", "time"))
WRITE_INTERACTION_EVENTS = [
    {"Message": "A\n", "Kind": "stdout", "Delay": 0},
    {"Message": "B\n", "Kind": "stderr", "Delay": 1},
    {"Message": "A\nA\n", "Kind": "stdout", "Delay": 1},
    {"Message": "B\n", "Kind": "stderr", "Delay": 1_000_000_000 - 2},
    {"Message": "A\n", "Kind": "stdout", "Delay": 1_000_000_000},
]
# tests.go's faketime_tickers.
TICKERS = """package main

import (
\t"fmt"
\t"time"
)

func main() {
\tt1 := time.Tick(time.Second * 3)
\tt2 := time.Tick(time.Second * 7)
\tt3 := time.Tick(time.Second * 11)
\tend := time.After(time.Second * 19)
\twant := "112131211"
\tvar got []byte
\tfor {
\t\tvar c byte
\t\tselect {
\t\tcase <-t1:
\t\t\tc = '1'
\t\tcase <-t2:
\t\t\tc = '2'
\t\tcase <-t3:
\t\t\tc = '3'
\t\tcase <-end:
\t\t\tif g := string(got); g != want {
\t\t\t\tfmt.Printf("got %q, want %q\\n", g, want)
\t\t\t} else {
\t\t\t\tfmt.Println("timers fired as expected")
\t\t\t}
\t\t\treturn
\t\t}
\t\tgot = append(got, c)
\t}
}
"""
HOUR = go_main('\tfmt.Println("start", time.Now().Format(time.TimeOnly))\n'
               '\ttime.Sleep(time.Hour)\n'
               '\tfmt.Println("end", time.Now().Format(time.TimeOnly))',
               imports=("fmt", "time"))
# 400 lines, one stream then the other, written as fast as the program can: the two pipes are
# read apart, so without the fake clock's order the daemon reads runs of one stream at a time.
ALTERNATE = go_main('\tfor i := 0; i < 400; i++ {\n'
                    '\t\tw := os.Stdout\n\t\tif i%2 == 1 {\n\t\t\tw = os.Stderr\n\t\t}\n'
                    '\t\tfmt.Fprintln(w, i)\n\t}', imports=("fmt", "os"))
# Bytes that are no playback record, and a header of a hostile length, written by raw
# system calls (as no Go write would): data at the stream's last time; nothing is held.
RAW = go_main(
    '\tfmt.Println("record")\n'
    '\traw := func(b []byte) { syscall.RawSyscall(syscall.SYS_WRITE, 1, '
    'uintptr(unsafe.Pointer(&b[0])), uintptr(len(b))) }\n'
    '\traw([]byte("plain bytes\\n"))\n'
    '\th := []byte("\\x00\\x00PB\\x7f\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff")\n'
    '\traw(append(h, "huge\\n"...))',
    imports=("fmt", "syscall", "unsafe"))
TEST_SLEEPS = """package main

import (
\t"testing"
\t"time"
)

func TestSleepsADay(t *testing.T) {
\tstart := time.Now()
\ttime.Sleep(24 * time.Hour)
\tif time.Since(start) != 24*time.Hour {
\t\tt.Fatal(time.Since(start))
\t}
}
"""


def merged(events: list[dict]) -> list[tuple[str, str, int]]:
    """(stream, output, delay_ms), a stream's events with no delay between them as one (how
    many reads a stream's writes arrive in is the pipes')."""
    out: list[tuple[str, str, int]] = []
    for e in events:
        if out and out[-1][0] == e["stream"] and e["delay_ms"] == 0:
            out[-1] = (e["stream"], out[-1][1] + e["output"], out[-1][2])
        else:
            out.append((e["stream"], e["output"], e["delay_ms"]))
    return out


def run_one(daemon, request: dict) -> tuple[list[dict], dict]:
    events = daemon.run(request)
    return [e for e in events if not e.get("done")], finals(events)[request["id"]]


def test_time_starts_where_the_playgrounds_does(daemon):
    events, final = run_one(daemon, {"id": "now", "code": NOW, "faketime": True})
    assert final["status"] == "ok", final
    assert output(events) == "2009-11-10 23:00:00 +0000 UTC m=+0.000000001\n"
    assert [e["delay_ms"] for e in events] == [0]
    assert events[0]["fake_time_ns"] == 1_257_894_000_000_000_000
    # The same source without it: the real clock, from its own build (never the fake one's).
    events, final = run_one(daemon, {"id": "real", "code": NOW})
    assert final["status"] == "ok" and final["cached"] is False, final
    assert not output(events).startswith("2009-11-10") and "delay_ms" not in events[0]
    # Each from the binary cache from now on, each with its own clock.
    events, final = run_one(daemon, {"id": "again", "code": NOW, "faketime": True})
    assert final["cached"] is True and output(events).startswith("2009-11-10 23:00:00 ")
    events, final = run_one(daemon, {"id": "real2", "code": NOW})
    assert final["cached"] is True and not output(events).startswith("2009-11-10")


def test_an_hour_of_sleep_costs_no_wall_time(daemon):
    events, final = run_one(daemon, {"id": "hour", "code": HOUR, "faketime": True,
                                     "limits": {"run": {"wall_ms": 5000}}})
    assert final["status"] == "ok", final
    assert [(e["output"], e["delay_ms"]) for e in events] == [
        ("start 23:00:00\n", 0), ("end 00:00:00\n", 3_600_000)]
    assert final["wall_ms"] < 5000


def test_the_playgrounds_tickers_fire_in_order(daemon):
    events, final = run_one(daemon, {"id": "tick", "code": TICKERS, "faketime": True})
    assert final["status"] == "ok", final
    assert output(events) == "timers fired as expected\n"
    assert [e["delay_ms"] for e in events] == [19_000]


def test_stdout_and_stderr_keep_the_order_they_were_written_in(daemon):
    events, final = run_one(daemon, {"id": "wi", "code": WRITE_INTERACTION, "faketime": True})
    assert final["status"] == "ok", final
    assert merged(events) == [
        ("stdout", "A\n", 0), ("stderr", "B\n", 0), ("stdout", "A\nA\n", 0),
        ("stderr", "B\n", 1000), ("stdout", "A\n", 1000)]
    events, final = run_one(daemon, {"id": "alt", "code": ALTERNATE, "faketime": True})
    assert final["status"] == "ok", final
    lines = [(e["stream"], line) for e in events for line in e["output"].splitlines()]
    assert lines == [("stderr" if i % 2 else "stdout", str(i)) for i in range(400)]


def test_bytes_that_are_no_record_and_a_hostile_length(daemon):
    events, final = run_one(daemon, {"id": "raw", "code": RAW, "faketime": True})
    assert final["status"] == "ok", final
    text = output(events)
    assert text.startswith("record\nplain bytes\n") and text.endswith("huge\n"), text
    assert events[-1]["fake_time_ns"] == 2**63 - 1  # the hostile time, as it came


def test_tests_run_on_the_fake_clock_too(daemon):
    events, final = run_one(daemon, {"id": "t", "code": TEST_SLEEPS, "faketime": True,
                                     "limits": {"run": {"wall_ms": 5000}}})
    assert final["status"] == "ok", final
    assert final["tests_passed"] == 1 and final["tests_failed"] == 0, final
    assert "--- PASS: TestSleepsADay" in output(events)


def test_faketime_must_be_a_boolean(daemon):
    events = daemon.run({"id": "b", "code": NOW, "faketime": "yes"},
                        {"id": "ok", "code": NOW, "faketime": False})
    done = finals(events)
    assert done["b"]["status"] == "bad_request"
    assert "faketime" in done["b"]["message"]
    assert done["ok"]["status"] == "ok"


@pytest.mark.skipif(driver_missing("bubblewrap") is not None, reason="no bubblewrap")
def test_compile_gives_the_playgrounds_exact_events():
    daemon, port = http_daemon()
    try:
        def compile_(prog: str) -> dict:
            form = urllib.parse.urlencode({"version": "2", "body": prog}).encode()
            status, _, body = exchange(port, "POST", "/compile", form,
                                       {"Content-Type": "application/x-www-form-urlencoded"})
            assert status == 200, body
            return json.loads(body)

        started = time.monotonic()
        answer = compile_(WRITE_INTERACTION)
        assert answer["Events"] == WRITE_INTERACTION_EVENTS, answer
        answer = compile_(NOW)
        assert answer["Events"] == [{"Message": "2009-11-10 23:00:00 +0000 UTC "
                                                "m=+0.000000001\n", "Kind": "stdout",
                                     "Delay": 0}], answer
        answer = compile_(HOUR)
        assert [e["Delay"] for e in answer["Events"]] == [0, 3600 * 1_000_000_000], answer
        assert time.monotonic() - started < 120
    finally:
        daemon.cleanup()


def test_output_is_live_and_bounded(daemon):
    """Interactive: each answer comes while the program still runs (nothing waits for its
    end); a program that writes for ever stops at the output limit, one final event."""
    echo = go_main('\tin := bufio.NewScanner(os.Stdin)\n'
                   '\tfor in.Scan() {\n\t\ttime.Sleep(time.Minute)\n'
                   '\t\tfmt.Println("got", in.Text())\n\t}',
                   imports=("bufio", "fmt", "os", "time"))
    with daemon.connect() as client:
        client.send({"id": "i", "code": echo, "interactive": True, "faketime": True})
        client.send({"type": "stdin", "id": "i", "data": "one\n"})
        first = client.read_event()
        assert (first["output"], first["delay_ms"]) == ("got one\n", 60_000), first
        client.send({"type": "stdin", "id": "i", "data": "two\n"})
        second = client.read_event()
        assert (second["output"], second["delay_ms"]) == ("got two\n", 60_000), second
        client.send({"type": "stdin", "id": "i", "eof": True})
        assert finals(client.read_until_done("i"))["i"]["status"] == "ok"
    flood = go_main('\tfor {\n\t\tfmt.Fprintln(os.Stderr, "e")\n\t\tfmt.Println("o")\n\t}',
                    imports=("fmt", "os"))
    # Each write is a 16-byte header and 2 bytes: ~22 000 writes, in order to the last.
    events = daemon.run({"id": "f", "code": flood, "faketime": True,
                         "limits": {"output_bytes": 400_000}})
    done = finals(events)
    assert done["f"]["status"] == "output_limit", done
    text = output(events, "f")
    assert 20_000 < len(text) == done["f"]["output_bytes"] < 400_000 / 9 + 2
    assert text == ("e\no\n" * 20_000)[:len(text)]
    # Records without data (headers only, by raw system calls) count too: an output limit,
    # not a wall-clock run of headers the daemon decodes for nothing.
    empty = go_main(
        '\th := []byte("\\x00\\x00PB\\x11\\x74\\xef\\xed\\xab\\x18\\x60\\x00\\x00\\x00\\x00'
        '\\x00")\n\tfor {\n\t\tsyscall.RawSyscall(syscall.SYS_WRITE, 1, '
        'uintptr(unsafe.Pointer(&h[0])), uintptr(len(h)))\n\t}',
        imports=("syscall", "unsafe"))
    events, final = run_one(daemon, {"id": "empty", "code": empty, "faketime": True,
                                     "limits": {"output_bytes": 100_000,
                                                "run": {"wall_ms": 5000}}})
    assert final["status"] == "output_limit" and final["output_bytes"] == 0, final
    assert events == []


def test_a_sleep_loop_for_ever_ends_at_the_wall_limit(daemon):
    """tests.go's timeouts_handled_gracefully: fake time races on, the program never ends; the
    run's wall limit ends it (on /compile: "timeout running program")."""
    forever = go_main('\tc := make(chan struct{})\n\tgo func() {\n\t\tdefer close(c)\n'
                      '\t\tfor {\n\t\t\ttime.Sleep(10 * time.Millisecond)\n\t\t}\n\t}()\n\t<-c',
                      imports=("time",))
    events, final = run_one(daemon, {"id": "loop", "code": forever, "faketime": True,
                                     "limits": {"run": {"wall_ms": 1500}}})
    assert final["status"] == "timeout" and final["phase"] == "run", final
    assert events == []
