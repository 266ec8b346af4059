"""What both API-outage tests (test_connection_loss.py: the API frozen by the fault proxy;
test_api_server_stopped.py: its process stopped) do while the API is away."""

from __future__ import annotations

import libvirt

from tests.e2e.harness import Host, OperatorProcess, poll


def suspend_while_the_api_is_away(host: Host, operator: OperatorProcess, name: str, uid: str) -> None:
    """Suspend the VM's guest behind the operator's back and wait until the operator has received the
    lifecycle event (it cannot have written it: the API is away)."""
    host.virsh("suspend", f"default_{name}")
    poll(lambda: host.state(uid) == libvirt.VIR_DOMAIN_PAUSED, what="the guest paused")
    poll(lambda: operator.metric("libvirt_operator_libvirt_events_total", type="Suspended") >= 1,
         what="the operator to receive the SUSPENDED event")
