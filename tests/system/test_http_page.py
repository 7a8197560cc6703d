"""The playground page in a real headless Chromium against a real daemon.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/sandbox-tools.sh --test``
installs them) and selenium (the test extras); nothing is downloaded.
"""

from __future__ import annotations

import shutil
import time

import pytest

from tests.harness import HANG, driver_missing
from tests.httpface import http_daemon

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="chromium and chromium-driver are not installed (Debian packages; "
                              "scripts/sandbox-tools.sh --test installs them): page not tested"),
    pytest.mark.skipif(driver_missing("bubblewrap") is not None,
                       reason="bubblewrap is not installed (make setup installs it)"),
]

LIVE = """package main

import (
\t"fmt"
\t"time"
)

func main() {
\tfor i := 0; i < 3; i++ {
\t\tfmt.Println("Hello", i)
\t\ttime.Sleep(time.Second)
\t}
}
"""
BROKEN = """package main

import "fmt"

func main() {
\tfmt.Println("x")
\tundefinedThing()
}
"""


@pytest.fixture(scope="module")
def page():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    daemon, port = http_daemon()
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,720",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    browser = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait_for(browser, "return document.getElementById('conn').textContent",
                 lambda text: text.startswith("sandboxd "))
        yield browser
    finally:
        browser.quit()
        daemon.cleanup()


def wait_for(browser, script: str, good, timeout: float = HANG):
    deadline = time.monotonic() + timeout
    while True:
        value = browser.execute_script(script)
        if good(value):
            return value
        assert time.monotonic() < deadline, value
        time.sleep(0.05)


def type_program(browser, text: str) -> None:
    """Clear the editor and type ``text`` key by key into it, as a person would: the editor
    indents each new line itself (Go mode), so the typed lines carry no indentation."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.execute_script("var cm = window.sandboxdEditor; cm.setValue('');"
                           "cm.setOption('autoCloseBrackets', false); cm.focus();")
    area = browser.find_element(By.CSS_SELECTOR, ".CodeMirror textarea")
    for line in text.strip("\n").split("\n"):
        area.send_keys(line.lstrip("\t"))
        area.send_keys(Keys.ENTER)
    browser.execute_script("window.sandboxdEditor.setOption('autoCloseBrackets', true)")


def status_text(browser) -> str:
    return browser.execute_script("return document.getElementById('status').textContent")


def test_run_streams_lines_one_by_one(page):
    from selenium.webdriver.common.by import By

    type_program(page, LIVE)
    typed = page.execute_script("return window.sandboxdEditor.getValue()")
    assert [line.strip() for line in typed.strip().split("\n")] == [
        line.strip() for line in LIVE.strip().split("\n")]
    assert "\n\t\tfmt.Println" in typed  # indented by the editor, with tabs
    # Record when each line shows up in the page.
    page.execute_script("""
        window.seen = [];
        new MutationObserver(function () {
          window.seen.push([performance.now(), document.getElementById('output').textContent]);
        }).observe(document.getElementById('output'), {childList: true, subtree: true});
    """)
    page.find_element(By.ID, "run").click()
    wait_for(page, "return document.getElementById('status').className",
             lambda c: c in ("status ok", "status err"))
    assert status_text(page).startswith("ok: the program exited normally"), status_text(page)
    assert " ms wall" in status_text(page) and " MiB" in status_text(page)
    seen = page.execute_script("return window.seen")
    first = {}
    for at, text in seen:
        for i in range(3):
            if f"Hello {i}\n" in text and i not in first:
                first[i] = at
    assert sorted(first) == [0, 1, 2], seen
    assert first[1] - first[0] > 700 and first[2] - first[1] > 700, first
    spans = page.find_elements(By.CSS_SELECTOR, "#output span.stdout")
    assert "".join(s.text + "\n" for s in spans) == "Hello 0\nHello 1\nHello 2\n"


def test_ctrl_enter_runs_and_stdin_reaches_the_program(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page.execute_script("window.sandboxdEditor.setValue(arguments[0])", (
        'package main\n\nimport (\n\t"bufio"\n\t"fmt"\n\t"os"\n)\n\nfunc main() {\n'
        '\ts := bufio.NewScanner(os.Stdin)\n\tfor s.Scan() {\n\t\tfmt.Println("got", '
        's.Text())\n\t}\n\tfmt.Fprintln(os.Stderr, "eof")\n}\n'))
    area = page.find_element(By.CSS_SELECTOR, ".CodeMirror textarea")
    area.send_keys(Keys.CONTROL, Keys.ENTER)
    box = page.find_element(By.ID, "stdin")
    wait_for(page, "return !document.getElementById('stdin').disabled", bool)
    box.send_keys("hello there", Keys.ENTER)
    wait_for(page, "return document.getElementById('output').textContent",
             lambda t: "got hello there\n" in t)
    page.find_element(By.ID, "eof").click()
    wait_for(page, "return document.getElementById('status').className",
             lambda c: c == "status ok")
    stderr = page.find_elements(By.CSS_SELECTOR, "#output span.stderr")
    assert [s.text for s in stderr] == ["eof"]


def test_cancel_a_loop(page):
    from selenium.webdriver.common.by import By

    page.execute_script("window.sandboxdEditor.setValue(arguments[0])",
                        'package main\n\nimport "fmt"\n\nfunc main() {\n\tfor i := 0; ; i++ '
                        '{\n\t\tif i%100000000 == 0 {\n\t\t\tfmt.Println(i)\n\t\t}\n\t}\n}\n')
    page.find_element(By.ID, "run").click()
    wait_for(page, "return document.getElementById('output').textContent",
             lambda t: t.startswith("0\n"))
    page.find_element(By.ID, "cancel").click()
    wait_for(page, "return document.getElementById('status').className",
             lambda c: c == "status err", timeout=15)
    assert status_text(page).startswith("cancelled: cancelled by the client"), status_text(page)
    assert page.find_element(By.ID, "run").is_enabled()


def test_click_a_compile_error(page):
    from selenium.webdriver.common.by import By

    page.execute_script("window.sandboxdEditor.setValue(arguments[0]);"
                        "window.sandboxdEditor.setCursor({line: 0, ch: 0})", BROKEN)
    page.find_element(By.ID, "run").click()
    wait_for(page, "return document.getElementById('status').className",
             lambda c: c == "status err")
    assert status_text(page).startswith("compile_error"), status_text(page)
    link = page.find_element(By.CSS_SELECTOR, "#output a.diag")
    assert link.text == "main.go:7:2"
    link.click()
    cursor = page.execute_script("return window.sandboxdEditor.getCursor()")
    assert (cursor["line"], cursor["ch"]) == (6, 1)
    marked = page.find_elements(By.CSS_SELECTOR, ".CodeMirror .error-line")
    assert len(marked) == 1


def test_format_and_vet_buttons(page):
    from selenium.webdriver.common.by import By

    page.execute_script("window.sandboxdEditor.setValue(arguments[0])",
                        'package main\nimport "fmt"\nfunc main(){fmt.Printf("%d\\n", "x")}\n')
    page.find_element(By.ID, "fmt").click()
    wait_for(page, "return document.getElementById('status').className",
             lambda c: c == "status ok")
    assert page.execute_script("return window.sandboxdEditor.getValue()") == (
        'package main\n\nimport "fmt"\n\nfunc main() { fmt.Printf("%d\\n", "x") }\n')
    page.find_element(By.ID, "vet").click()
    wait_for(page, "return document.getElementById('status').className",
             lambda c: c == "status err")
    assert status_text(page).startswith("vet_issues"), status_text(page)


def test_test_button_and_session_toggle(page):
    from selenium.webdriver.common.by import By

    page.execute_script("window.sandboxdEditor.setValue(arguments[0])",
                        'package main\n\nimport "testing"\n\nfunc main() {}\n\n'
                        'func TestOne(t *testing.T) {}\n')
    page.find_element(By.ID, "test").click()
    wait_for(page, "return document.getElementById('status').className",
             lambda c: c == "status ok")
    assert "1 passed, 0 failed" in status_text(page), status_text(page)
    assert "--- PASS: TestOne" in page.find_element(By.ID, "output").text

    def run(code: str) -> str:
        page.execute_script("window.sandboxdEditor.setValue(arguments[0])", code)
        page.find_element(By.ID, "run").click()
        wait_for(page, "return document.getElementById('status').className",
                 lambda c: c in ("status ok", "status err"))
        return page.find_element(By.ID, "output").text

    write = ('package main\n\nimport "os"\n\nfunc main() { os.WriteFile("kept", []byte("yes"), '
             '0o644) }\n')
    read = ('package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc main() {\n\tb, err := '
            'os.ReadFile("kept")\n\tfmt.Println(string(b), err == nil)\n}\n')
    box = page.find_element(By.ID, "session")
    assert not box.is_selected()
    run(write)
    assert run(read).strip() == "false"  # without a session every run has a fresh box
    box.click()
    run(write)
    assert run(read).strip() == "yes true"  # the session's box kept the file
    box.click()


def test_a_compile_error_in_another_file_links_to_its_section(page):
    from selenium.webdriver.common.by import By

    page.execute_script("window.sandboxdEditor.setValue(arguments[0]);"
                        "window.sandboxdEditor.setCursor({line: 0, ch: 0})",
                        'package main\n\nfunc main() { hello() }\n-- hello.go --\npackage main\n\n'
                        'func hello() {\n\tnotThere()\n}\n')
    page.find_element(By.ID, "run").click()
    wait_for(page, "return document.getElementById('status').className",
             lambda c: c == "status err")
    link = page.find_element(By.CSS_SELECTOR, "#output a.diag")
    assert link.text == "hello.go:4:2"
    link.click()
    cursor = page.execute_script("return window.sandboxdEditor.getCursor()")
    assert (cursor["line"], cursor["ch"]) == (7, 1)  # the 4th line after "-- hello.go --"
