"""The power-state policy table (README) as executable rows."""

from __future__ import annotations

import pytest

from libvirt_operator.api.status import Phase, PowerState
from libvirt_operator.pipeline.policy import Action, Observed, decide, phase_for

SHUTOFF = PowerState.SHUTOFF
RUNNING = PowerState.RUNNING
PAUSED = PowerState.PAUSED


def _decide(strategy: str, power: PowerState, reason: str, *, paused: bool = False, first_start: bool = False,
            spec_changed: bool = False, believed_running: bool = True) -> Action:
    return decide(run_strategy=strategy, paused=paused, observed=Observed(power, reason), first_start=first_start,
                  spec_changed=spec_changed, believed_running=believed_running).action


@pytest.mark.parametrize(("strategy", "reason", "expected"), [
    ("Always", "Crashed", Action.START),
    ("Always", "Shutdown", Action.START),
    ("Always", "Destroyed", Action.START),
    ("Always", "Failed", Action.START),
    ("RerunOnFailure", "Crashed", Action.START),
    ("RerunOnFailure", "Failed", Action.START),
    ("RerunOnFailure", "Destroyed", Action.START),
    ("RerunOnFailure", "Shutdown", Action.NONE),
    ("Manual", "Crashed", Action.NONE),
    ("Manual", "Shutdown", Action.NONE),
    ("Manual", "Destroyed", Action.NONE),
    ("Halted", "Crashed", Action.NONE),
    ("Halted", "Shutdown", Action.NONE),
    ("Once", "Crashed", Action.NONE),
    ("Once", "Shutdown", Action.NONE),
    ("Once", "Destroyed", Action.NONE),
])
def test_a_guest_that_stopped_by_itself_is_handled_per_run_strategy(strategy: str, reason: str,
                                                                     expected: Action) -> None:
    assert _decide(strategy, SHUTOFF, reason) == expected


def test_restart_by_policy_is_flagged_so_it_is_reported_as_an_event() -> None:
    decision = decide(run_strategy="Always", paused=False, observed=Observed(SHUTOFF, "Crashed"),
                      first_start=False, spec_changed=False, believed_running=True)
    assert decision.restart_by_policy


def test_halted_stops_a_guest_started_from_outside() -> None:
    assert _decide("Halted", RUNNING, "Booted") == Action.STOP
    assert _decide("Halted", PAUSED, "User") == Action.STOP


def test_once_runs_once_and_a_spec_change_does_not_start_it_again() -> None:
    assert _decide("Once", SHUTOFF, "Unknown", first_start=True, believed_running=False) == Action.START
    assert _decide("Once", SHUTOFF, "Shutdown", spec_changed=True, believed_running=False) == Action.NONE
    assert _decide("Once", RUNNING, "Booted") == Action.NONE


@pytest.mark.parametrize("strategy", ["Always", "RerunOnFailure", "Manual", "Once"])
def test_first_start_starts_every_strategy_but_halted(strategy: str) -> None:
    assert _decide(strategy, SHUTOFF, "Unknown", first_start=True, believed_running=False) == Action.START
    assert _decide("Halted", SHUTOFF, "Unknown", first_start=True, believed_running=False) == Action.NONE


def test_rerun_on_failure_after_host_reboot_restarts_only_what_was_running() -> None:
    assert _decide("RerunOnFailure", SHUTOFF, "Unknown", believed_running=True) == Action.START
    assert _decide("RerunOnFailure", SHUTOFF, "Unknown", believed_running=False) == Action.NONE


def test_a_pause_from_libvirt_is_recorded_not_fought() -> None:
    assert _decide("Always", PAUSED, "IOError") == Action.NONE
    assert _decide("Always", PAUSED, "IOError", spec_changed=True) == Action.NONE
    assert _decide("Always", PAUSED, "User") == Action.NONE  # virsh suspend from outside


def test_spec_paused_is_honoured_when_the_user_changes_it() -> None:
    assert _decide("Always", RUNNING, "Booted", paused=True, spec_changed=True) == Action.PAUSE
    assert _decide("Always", PAUSED, "User", paused=False, spec_changed=True) == Action.RESUME
    assert _decide("Manual", PAUSED, "User", paused=False, spec_changed=True) == Action.RESUME


def test_a_guest_started_paused_is_resumed_when_not_wanted_paused() -> None:
    assert _decide("Always", PAUSED, "StartingUp") == Action.RESUME


@pytest.mark.parametrize(("power", "phase"), [
    (PowerState.RUNNING, Phase.RUNNING), (PowerState.BLOCKED, Phase.RUNNING), (PowerState.PAUSED, Phase.PAUSED),
    (PowerState.PM_SUSPENDED, Phase.PAUSED), (PowerState.SHUTTING_DOWN, Phase.STOPPING),
    (PowerState.SHUTOFF, Phase.STOPPED), (PowerState.CRASHED, Phase.STOPPED), (PowerState.NO_STATE, Phase.STOPPED),
])
def test_phase_follows_libvirt_power_state(power: PowerState, phase: Phase) -> None:
    assert phase_for(power) == phase


@pytest.mark.parametrize(("strategy", "reason"), [
    ("Always", "Shutdown"), ("Always", "Destroyed"), ("RerunOnFailure", "Destroyed"), ("RerunOnFailure", "Crashed"),
])
def test_a_start_the_user_asks_for_is_a_start_not_a_restart_by_policy(strategy: str, reason: str) -> None:
    # Halted (or Manual) -> Always while stopped: the README's table counts only guests that stopped on
    # their own as restarts (status.restarts, the RestartedByPolicy Event).
    decision = decide(run_strategy=strategy, paused=False, observed=Observed(SHUTOFF, reason), first_start=False,
                      spec_changed=True, believed_running=False)
    assert decision.action == Action.START
    assert not decision.restart_by_policy
    stopped_on_its_own = decide(run_strategy=strategy, paused=False, observed=Observed(SHUTOFF, reason),
                                first_start=False, spec_changed=False, believed_running=True)
    assert stopped_on_its_own.action == Action.START and stopped_on_its_own.restart_by_policy
