"""Compile errors read like ``main.go:10:7: undefined: time.Slseep``: no sandbox paths, no noise."""

from __future__ import annotations

from sandboxd.golang.diagnostics import clean


def test_go_build_output_is_cleaned():
    raw = (
        "# command-line-arguments\n"
        "./main.go:10:7: undefined: time.Slseep\n"
        "./main.go:11:2: declared and not used: x\n"
    )
    assert clean(raw) == (
        "main.go:10:7: undefined: time.Slseep\nmain.go:11:2: declared and not used: x\n"
    )


def test_module_package_header_is_dropped_too():
    assert clean("# sandbox\n./main.go:3:1: syntax error\n") == "main.go:3:1: syntax error\n"


def test_vet_prefix_is_dropped():
    assert clean("vet: ./main.go:5:2: fmt.Printf format %d has arg x of wrong type\n") == (
        "main.go:5:2: fmt.Printf format %d has arg x of wrong type\n"
    )


def test_src_paths_are_made_relative():
    raw = (
        "/src/main.go:4:2: undefined: y\n"
        "\t/src/lib/a.go:3:1: other declaration of f\n"
        "main.go:9:1: f redeclared (see /src/lib/a.go:3:1)\n"
        "imported at (/src/main.go:3:8)\n"
    )
    out = clean(raw)
    assert "/src/" not in out
    assert "main.go:4:2: undefined: y\n" in out
    assert "\tlib/a.go:3:1: other declaration of f\n" in out
    assert "(see lib/a.go:3:1)" in out and "(main.go:3:8)" in out


def test_toolchain_noise_is_dropped():
    raw = "go: warning: ignoring go.mod in $GOPATH /tmp\nnote: module requires Go 1.99\nreal\n"
    assert clean(raw) == "real\n"


def test_lines_that_only_look_like_headers_are_kept():
    # A header is "# <one word>"; a message with spaces after '#' is not one.
    assert clean("# not a header line\n") == "# not a header line\n"


def test_empty_and_unterminated():
    assert clean("") == ""
    assert clean("./main.go:1:1: x") == "main.go:1:1: x\n"
