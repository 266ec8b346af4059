"""A command run inside a real guest through its QEMU guest agent: ``guest-exec`` and ``guest-exec-status``
(libvirt's qemuAgentCommand on the host's connection), so a test reads the guest's own files without SSH
and without a network (docs/guest-image.md: Debian's qemu-guest-agent blocks none of its commands).

``guest_exec`` takes the agent as a callable (a JSON command in, the JSON answer out): ``agent_of`` makes
one for a libvirt domain; the unit tests give a fake one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import libvirt
import libvirt_qemu

from testbed.polling import wait_for

Agent = Callable[[str], str]
AGENT_TIMEOUT = 10  # seconds libvirt waits for each of the agent's answers


class GuestExecError(RuntimeError):
    """The agent answered with an error, or the command did not end within the deadline."""


@dataclass(frozen=True)
class Exited:
    code: int
    out: str
    err: str


def agent_of(dom: libvirt.virDomain, timeout: int = AGENT_TIMEOUT) -> Agent:
    """The guest agent of a running domain (raises libvirt.libvirtError while it is not connected)."""
    return lambda command: str(libvirt_qemu.qemuAgentCommand(dom, command, timeout, 0))


def _ask(agent: Agent, execute: str, arguments: dict[str, Any]) -> Any:
    answer = json.loads(agent(json.dumps({"execute": execute, "arguments": arguments})))
    if not isinstance(answer, dict) or "return" not in answer:
        raise GuestExecError(f"{execute}: the agent answered {answer!r}")
    return answer["return"]


def _text(data: Any) -> str:
    return base64.b64decode(data).decode(errors="replace") if data else ""


def guest_exec(agent: Agent, path: str, args: Sequence[str] = (), *, timeout: float = 30.0) -> Exited:
    """Run ``path args...`` in the guest and return its exit code and output once it has exited."""
    started = _ask(agent, "guest-exec", {"path": path, "arg": list(args), "capture-output": True})
    pid = int(started["pid"])

    def exited() -> dict[str, Any]:  # {}: still running
        status = _ask(agent, "guest-exec-status", {"pid": pid})
        return status if isinstance(status, dict) and status.get("exited") else {}
    try:
        status = wait_for(exited, timeout=timeout, interval=0.1, what=f"{path} (pid {pid} in the guest) to exit")
    except AssertionError as exc:
        raise GuestExecError(str(exc)) from None
    return Exited(int(status.get("exitcode", -1)), _text(status.get("out-data")), _text(status.get("err-data")))


@dataclass(frozen=True)
class BootClock:
    """What the guest's kernel says about its boot: seconds since it booted, and the id of this boot."""

    uptime: float
    boot_id: str


def boot_clock(agent: Agent) -> BootClock:
    """/proc/uptime and /proc/sys/kernel/random/boot_id, read in the guest with one ``cat``."""
    done = guest_exec(agent, "/bin/cat", ["/proc/uptime", "/proc/sys/kernel/random/boot_id"])
    lines = done.out.split()
    if done.code != 0 or len(lines) != 3:
        raise GuestExecError(f"cat /proc/uptime boot_id in the guest: exit {done.code}, {done.out!r} {done.err!r}")
    return BootClock(float(lines[0]), lines[2])
