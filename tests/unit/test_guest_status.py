"""What the guest tells, turned into status: interfaces by MAC, guestOS, AgentConnected; and which domain
type a host's KVM allows."""

from __future__ import annotations

from typing import Any

import pytest

from libvirt_operator.api.spec import parse_spec
from libvirt_operator.handlers.vm import agent_condition
from libvirt_operator.hypervisor.domain_xml import user_mac
from libvirt_operator.hypervisor.guest import (
    GuestData,
    agent_channel_state,
    guest_os,
    libvirt_macs,
    spec_macs,
    status_interfaces,
)
from libvirt_operator.runtime import kvm_problem

LIVE = """<domain type='qemu'><devices>
  <interface type='network'><mac address='52:54:00:AA:00:01'/><source network='default'/></interface>
  <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='connected'/></channel>
</devices></domain>"""
SPEC = parse_spec({"nodeName": "n", "memory": "64Mi", "interfaces": [
    {"name": "lan", "network": "default"},
    {"name": "ssh", "user": {"portForwards": [{"port": 22, "hostPort": 2222}]}},
    {"name": "off", "bridge": "br0"}]})
UID = "0b9a3c1e-2f4d-4e5a-8b6c-7d8e9f0a1b2c"


def test_the_agent_channel_state_is_read_from_the_live_xml() -> None:
    assert agent_channel_state(LIVE) == "connected"
    assert agent_channel_state(LIVE.replace("connected", "disconnected")) == "disconnected"
    assert agent_channel_state("<domain><devices/></domain>") is None
    assert agent_channel_state("not xml") is None


def test_each_spec_interface_gets_its_mac_libvirts_or_ours() -> None:
    macs = spec_macs(UID, SPEC.interfaces, libvirt_macs(LIVE))
    assert macs == ["52:54:00:aa:00:01", user_mac(UID, "ssh"), ""]


def test_addresses_are_matched_by_mac_without_link_local_or_loopback() -> None:
    macs = ["52:54:00:aa:00:01", user_mac(UID, "ssh"), ""]
    reported: dict[str, Any] = {
        "lo": {"hwaddr": "00:00:00:00:00:00", "addrs": [{"type": 0, "addr": "127.0.0.1", "prefix": 8}]},
        "enp1s0": {"hwaddr": "52:54:00:AA:00:01", "addrs": [
            {"type": 0, "addr": "192.168.122.7", "prefix": 24}, {"type": 1, "addr": "fe80::1", "prefix": 64},
            {"type": 1, "addr": "fd00::7", "prefix": 64}]},
        "ens3": {"hwaddr": user_mac(UID, "ssh"), "addrs": [{"type": 0, "addr": "10.0.2.15", "prefix": 24}]},
    }
    assert status_interfaces(SPEC.interfaces, macs, reported) == [
        {"name": "lan", "macAddress": "52:54:00:aa:00:01", "interfaceName": "enp1s0",
         "ipAddresses": ["192.168.122.7", "fd00::7"]},
        {"name": "ssh", "macAddress": user_mac(UID, "ssh"), "interfaceName": "ens3", "ipAddresses": ["10.0.2.15"]},
        {"name": "off"},
    ]
    # Nothing reported (no agent, no lease): the MACs still.
    assert status_interfaces(SPEC.interfaces, macs, {})[0] == {"name": "lan", "macAddress": "52:54:00:aa:00:01"}


def test_guest_os_takes_the_agents_os_and_hostname_fields() -> None:
    info = {"os.id": "debian", "os.name": "Debian GNU/Linux", "os.version": "12 (bookworm)",
            "os.pretty-name": "Debian GNU/Linux 12 (bookworm)", "os.kernel-release": "6.1.0-28-cloud-amd64",
            "os.kernel-version": "#1 SMP", "os.machine": "x86_64", "hostname": "cloud-1", "timezone.name": "UTC"}
    assert guest_os(info) == {"id": "debian", "name": "Debian GNU/Linux", "version": "12 (bookworm)",
                              "prettyName": "Debian GNU/Linux 12 (bookworm)", "kernelRelease": "6.1.0-28-cloud-amd64",
                              "kernelVersion": "#1 SMP", "hostname": "cloud-1"}
    assert guest_os({}) is None


@pytest.mark.parametrize(("data", "active", "status", "reason"), [
    (None, False, "False", "GuestNotRunning"),
    (GuestData(True), True, "True", "AgentAnswers"),
    (GuestData(False, agent_error="timeout"), True, "False", "AgentNotAnswering"),
    (GuestData(False), True, "False", "AgentNotConnected"),
])
def test_agent_connected_condition(data: GuestData | None, active: bool, status: str, reason: str) -> None:
    assert agent_condition(data, active)[:2] == (status, reason)


@pytest.mark.parametrize(("modules", "flags", "usable"), [
    (["kvm", "kvm_pvm"], ["fpu", "sse2"], False),  # nested PVM: no real guest kernel
    (["kvm", "kvm_pvm"], ["vmx"], True),
    (["kvm", "kvm_intel"], ["vmx"], True),
    (["kvm", "kvm_amd"], ["svm"], True),
])
def test_a_kvm_that_cannot_run_a_real_guest_is_recognised(modules: list[str], flags: list[str],
                                                          usable: bool) -> None:
    problem = kvm_problem(modules, flags)
    assert (problem is None) is usable
    if problem is not None:
        assert "kvm_pvm" in problem and "TCG" in problem
