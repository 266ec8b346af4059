"""testbed/guest_agent.py against a fake guest agent: the guest-exec protocol, decoded."""

from __future__ import annotations

import base64
import json

import pytest

from testbed.guest_agent import BootClock, GuestExecError, boot_clock, guest_exec


class FakeAgent:
    """guest-exec starts pid 7; guest-exec-status says 'running' ``polls`` times, then exited."""

    def __init__(self, out: str, *, code: int = 0, polls: int = 2, error: bool = False) -> None:
        self.out, self.code, self.polls, self.error = out, code, polls, error
        self.commands: list[dict[str, object]] = []

    def __call__(self, command: str) -> str:
        asked = json.loads(command)
        self.commands.append(asked)
        if self.error:
            return json.dumps({"error": {"class": "GenericError", "desc": "Command guest-exec has been disabled"}})
        if asked["execute"] == "guest-exec":
            return json.dumps({"return": {"pid": 7}})
        assert asked == {"execute": "guest-exec-status", "arguments": {"pid": 7}}
        if self.polls:
            self.polls -= 1
            return json.dumps({"return": {"exited": False}})
        return json.dumps({"return": {"exited": True, "exitcode": self.code,
                                      "out-data": base64.b64encode(self.out.encode()).decode()}})


def test_guest_exec_waits_for_the_command_to_exit_and_decodes_its_output() -> None:
    agent = FakeAgent("hello\n", polls=3)
    done = guest_exec(agent, "/bin/echo", ["hello"])
    assert (done.code, done.out, done.err) == (0, "hello\n", "")
    assert agent.commands[0] == {"execute": "guest-exec",
                                 "arguments": {"path": "/bin/echo", "arg": ["hello"], "capture-output": True}}
    assert len(agent.commands) == 5  # guest-exec, three times still running, exited


def test_boot_clock_reads_uptime_and_boot_id() -> None:
    agent = FakeAgent("123.45 98.10\n0f1e2d3c-aaaa-bbbb-cccc-123456789abc\n")
    assert boot_clock(agent) == BootClock(123.45, "0f1e2d3c-aaaa-bbbb-cccc-123456789abc")


def test_an_agent_refusing_guest_exec_or_a_failed_cat_is_an_error_not_a_reading() -> None:
    with pytest.raises(GuestExecError, match="disabled"):
        guest_exec(FakeAgent("", error=True), "/bin/cat")
    with pytest.raises(GuestExecError, match="exit 1"):
        boot_clock(FakeAgent("", code=1))
