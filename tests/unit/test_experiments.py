"""``//GOEXPERIMENT=`` header lines, read as golang/playground's sandbox.go reads them."""

from __future__ import annotations

import pytest

from sandboxd.golang import experiments
from sandboxd.jobs.bincache import BinaryCache
from sandboxd.limits import DEFAULT_LIMITS


# golang/playground's own table (sandbox_test.go, TestExperiments), then more of the rule.
@pytest.mark.parametrize(("source", "found"), [
    ("//GOEXPERIMENT=active\n\npackage main", ["active"]),
    ("   //   GOEXPERIMENT=   active   \n\npackage main", ["active"]),
    ("   //   GOEXPERIMENT   =   active   \n\npackage main", ["active"]),
    ("//GOEXPERIMENT=foo\n\n// GOEXPERIMENT=bar\n\npackage main", ["foo", "bar"]),
    ("/* hello world */\n// GOEXPERIMENT=ignored\n", []),
    ("package main\n// GOEXPERIMENT=ignored\n", []),
    # Other comments (a //go:build line, a copyright) are part of the header.
    ("// Copyright\n//go:build linux\n\n//GOEXPERIMENT=a,nob\npackage main\n", ["a,nob"]),
    ("//GOEXPERIMENT=\n//GOEXPERIMENT\n// GOEXPERIMENTAL=x\npackage main\n", []),
    ("//GOEXPERIMENT=x\r\n\r\npackage main\r\n", ["x"]),  # TrimSpace takes the \r
    ("\t\v\f//GOEXPERIMENT=\u00a0x\u0085\n", ["x"]),  # Go's spaces, Latin-1's included
    ("", []),
])
def test_header_is_the_playgrounds_rule(source, found):
    assert experiments.header(source) == found


def test_of_files_joins_the_top_directory_in_order():
    files = {"main.go": b"//GOEXPERIMENT=a\npackage main\n",
             "sub/x.go": b"//GOEXPERIMENT=ignored\npackage sub\n",
             "b.go": b"// GOEXPERIMENT = b , c\npackage main\n",
             "go.mod": b"module sandbox\n// GOEXPERIMENT=ignored\n"}
    assert experiments.of_files(files) == "a,b , c"  # the go command checks the names
    assert experiments.of_files({"main.go": b"package main\n"}) == ""


@pytest.mark.parametrize(("value", "why"), [
    ("a\x00b", "printable ASCII"),
    ("\u00e9t\u00e9", "printable ASCII"),
    ("a\x1bb", "printable ASCII"),
    ("x" * 5000, "at most 4096"),
])
def test_what_the_go_command_cannot_be_given_is_refused_naming_it(value, why):
    with pytest.raises(experiments.ExperimentError, match=why):
        experiments.of_files({"main.go": f"//GOEXPERIMENT={value}\npackage main\n".encode()})


def test_the_binary_cache_key_covers_the_experiments():
    files = {"main.go": b"package main\n"}
    key = BinaryCache.key(files, "t", ("-trimpath",), DEFAULT_LIMITS.build)
    assert key == BinaryCache.key(files, "t", ("-trimpath",), DEFAULT_LIMITS.build, {})
    other = BinaryCache.key(files, "t", ("-trimpath",), DEFAULT_LIMITS.build,
                            {"GOEXPERIMENT": "arenas"})
    assert other != key
