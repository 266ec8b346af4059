"""A command on a pseudo-terminal, as a user at a terminal runs it (the serial console, `kubectl exec -it`)."""

from __future__ import annotations

import os
import pty
import select
import time
from collections.abc import Sequence

from testbed.polling import wait_for


def on_terminal(argv: Sequence[str], until: bytes, *, timeout: float = 60.0, nudge: bytes | None = None,
                nudge_every: float = 5.0, leave: bytes = b"\x1d") -> bytes:
    """What ``argv`` shows on a terminal until ``until`` appears (or the deadline), sending ``nudge`` every
    ``nudge_every`` seconds meanwhile (a carriage return makes getty print its prompt); then ``leave`` (the
    console's escape character, Ctrl+]) and the command must end, else it is killed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on the pty
        os.execvp(argv[0], list(argv))
    seen = b""
    deadline = time.monotonic() + timeout
    nudged = 0.0
    try:
        while until not in seen and time.monotonic() < deadline:
            if nudge is not None and time.monotonic() - nudged > nudge_every:
                os.write(fd, nudge)
                nudged = time.monotonic()
            ready, _w, _x = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
        os.write(fd, leave)
        try:
            wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, timeout=20, interval=0.1,
                     what=f"{argv[0]} on the terminal to end")
        except AssertionError:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return seen
