"""Injected API faults: the next N requests matching a verb and resource get an HTTP error instead of an
answer. Used by the emulator's debug endpoint and by the test bed's fault proxy in front of a real server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Fault:
    status: int
    verb: str | None  # None: any verb
    resource: str | None  # None: any resource ("virtualmachines/status" names a subresource)
    remaining: int

    def matches(self, verb: str, resource: str) -> bool:
        return (self.verb is None or self.verb == verb) and (self.resource is None or self.resource == resource)


def take_fault(faults: list[Fault], verb: str, resource: str) -> Fault | None:
    """The first pending fault for this request, counted down (and dropped once used up)."""
    for fault in faults:
        if fault.remaining > 0 and fault.matches(verb, resource):
            fault.remaining -= 1
            if fault.remaining == 0:
                faults.remove(fault)
            return fault
    return None
