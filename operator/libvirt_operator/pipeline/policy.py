"""Power-state policy: what to do when libvirt's state and the VirtualMachine's wish differ.

Pure functions, in the spirit of nova's ``_sync_instance_power_state`` and KubeVirt's run strategies:

| runStrategy    | guest stopped by crash/failure/destroy | clean guest shutdown | started from outside |
|----------------|----------------------------------------|----------------------|----------------------|
| Always         | restart                                | restart              | keep running         |
| RerunOnFailure | restart                                | stay Stopped         | keep running         |
| Manual         | record (Stopped)                       | record (Stopped)     | record (Running)     |
| Once           | stay Stopped                           | stay Stopped         | record (Running)     |
| Halted         | stay Stopped                           | stay Stopped         | stop it again        |

Once (KubeVirt's): started when first created (or retried), then never again once it stopped, however it
stopped; a spec change does not start it again either (Manual starts on a spec change only a VM never
started).

A guest shut off because it migrated away (shut-off reason Migrated) is never started again, whatever
the strategy: it runs on the other node.

A restart by policy is a guest that stopped on its own and is started again by the strategy; a start the
user asked for (the spec changed, e.g. Halted -> Always) is a start, never counted as a restart.

Pauses: ``spec.paused`` is acted on when the spec changes (generation moves); a pause that libvirt or
somebody else caused (I/O error, watchdog, ``virsh suspend``) is recorded with its reason and not fought.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from libvirt_operator.api.status import Phase, PowerState

# Shut-off reasons (libvirt's, by name) that count as a clean stop for RerunOnFailure.
CLEAN_SHUTOFF_REASONS = frozenset({"Shutdown", "Saved", "Migrated"})


class Action(StrEnum):
    NONE = "none"
    START = "start"
    STOP = "stop"
    PAUSE = "pause"
    RESUME = "resume"


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str
    restart_by_policy: bool = False


@dataclass(frozen=True)
class Observed:
    power: PowerState
    reason: str  # libvirt's state reason, by name ("Shutdown", "Crashed", "User", "IOError", ...)


def wants_running(run_strategy: str) -> bool:
    return run_strategy in ("Always", "RerunOnFailure")


def decide(
    *,
    run_strategy: str,
    paused: bool,
    observed: Observed,
    first_start: bool,
    spec_changed: bool,
    believed_running: bool,
) -> Decision:
    """One decision per reconciliation.

    ``first_start``: the VM was never started by the operator (just provisioned, or retried).
    ``spec_changed``: the spec moved since the status last observed it (the user asked for something).
    ``believed_running``: the status said Running/Paused/Starting before this observation.
    """
    power = observed.power
    stopped = power in (PowerState.SHUTOFF, PowerState.CRASHED, PowerState.NO_STATE)
    if stopped and observed.reason == "Migrated":
        # Its guest runs on another node now (a live migration): starting it here would make two.
        return Decision(Action.NONE, "migrated away: the guest runs on another node")

    if run_strategy == "Halted":
        if stopped:
            return Decision(Action.NONE, "Halted and stopped")
        if power == PowerState.SHUTTING_DOWN:
            return Decision(Action.NONE, "Halted and shutting down")
        return Decision(Action.STOP, "runStrategy Halted but the guest runs")

    if stopped:
        if first_start and run_strategy != "Halted":
            return Decision(Action.START, "first start")
        if run_strategy == "Always":
            if spec_changed:
                return Decision(Action.START, "runStrategy Always asked for while stopped")
            return Decision(Action.START, f"runStrategy Always and the guest stopped ({observed.reason})",
                            restart_by_policy=True)
        if run_strategy == "RerunOnFailure":
            clean = observed.reason in CLEAN_SHUTOFF_REASONS
            if observed.reason == "Unknown":
                # After a host or libvirtd restart libvirt forgets why; the status remembers it ran.
                clean = not believed_running
            if not clean:
                return Decision(Action.START, f"runStrategy RerunOnFailure and the guest failed "
                                f"({observed.reason})", restart_by_policy=not spec_changed)
            if spec_changed:
                return Decision(Action.START, "spec changed while cleanly stopped")
            return Decision(Action.NONE, "clean guest shutdown: stays Stopped")
        if run_strategy == "Manual" and spec_changed and first_start:
            return Decision(Action.START, "first start")
        if run_strategy == "Once":
            return Decision(Action.NONE, f"runStrategy Once: ran once and stopped ({observed.reason}); stays Stopped")
        return Decision(Action.NONE, f"runStrategy {run_strategy}: recorded as stopped")

    if power in (PowerState.RUNNING, PowerState.BLOCKED):
        if paused and (spec_changed or first_start):
            return Decision(Action.PAUSE, "spec.paused is true")
        return Decision(Action.NONE, "running")

    if power == PowerState.PAUSED:
        if observed.reason == "StartingUp" and not paused:
            return Decision(Action.RESUME, "started paused, spec.paused is false")
        if not paused and spec_changed and observed.reason in ("User", "Unknown", "StartingUp"):
            return Decision(Action.RESUME, "spec.paused is false")
        return Decision(Action.NONE, f"paused ({observed.reason}): recorded, not fought")

    return Decision(Action.NONE, f"{power.value}: nothing to do")


def phase_for(power: PowerState) -> Phase:
    if power in (PowerState.RUNNING, PowerState.BLOCKED):
        return Phase.RUNNING
    if power in (PowerState.PAUSED, PowerState.PM_SUSPENDED):
        return Phase.PAUSED
    if power == PowerState.SHUTTING_DOWN:
        return Phase.STOPPING
    return Phase.STOPPED
