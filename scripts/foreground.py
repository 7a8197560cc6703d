"""Run a command as the terminal's foreground job, as an interactive shell would: in its own
process group, given the terminal. Then Ctrl-C (SIGINT) reaches the command alone; make, which
runs this for `make run`, neither dies of it nor prints "Interrupt". Without a terminal the
command just runs.

twistd stops cleanly on SIGINT and then, by Twisted's convention, ends itself with that signal
again (so that a supervisor sees why it ended). Here SIGINT is how one stops `make run`: that
end is a success, 0. Any other end is passed on as it is (a signal N as 128 + N).

    python scripts/foreground.py COMMAND [ARG...]
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str]) -> int:
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:  # no terminal: no Ctrl-C to route; stay in the caller's process group
        os.execvp(argv[0], argv)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(tty, os.getpgrp())
        except OSError:
            pass
        signal.signal(signal.SIGTTOU, signal.SIG_DFL)
        os.close(tty)
        try:
            os.execvp(argv[0], argv)
        except OSError as e:
            print(f"{argv[0]}: {e.strerror}", file=sys.stderr)
            os._exit(127)
    try:
        os.setpgid(pid, pid)  # also here: whichever of the two runs first
    except OSError:
        pass
    # While the job runs, Ctrl-C and friends are its business (they reach only its group).
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    _, status = os.waitpid(pid, 0)
    try:
        os.tcsetpgrp(tty, os.getpgrp())  # the terminal back to make and its shell
    except OSError:
        pass
    code = os.waitstatus_to_exitcode(status)
    if code == -signal.SIGINT:
        return 0
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
