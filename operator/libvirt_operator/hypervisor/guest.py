"""What the guest itself tells: the QEMU guest agent (addresses, OS), else the libvirt network's DHCP leases.

``read_guest`` blocks (callers run it through ``Connection.call``) and asks the agent with a short timeout,
so a hung agent costs a worker thread a few seconds, never the asyncio loop. The rest is pure: reading the
live XML and turning libvirt's answers into the status fields.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import libvirt
import libvirt_qemu  # libvirt-python's QEMU-only calls (QMP passthrough)

from libvirt_operator.api.spec import InterfaceSpec
from libvirt_operator.hypervisor.domain_xml import AGENT_CHANNEL, user_mac

logger = logging.getLogger(__name__)

AGENT_TIMEOUT = 3  # seconds libvirt waits for each agent answer
_GUEST_OS_KEYS = {"os.name": "name", "os.id": "id", "os.version": "version", "os.pretty-name": "prettyName",
                  "os.kernel-release": "kernelRelease", "os.kernel-version": "kernelVersion"}


@dataclass(frozen=True)
class GuestData:
    agent_connected: bool
    interfaces: list[dict[str, Any]] = field(default_factory=list)
    guest_os: dict[str, str] | None = None
    agent_error: str = ""  # the agent's channel is up but it did not answer


def agent_channel_state(xml: str) -> str | None:
    """Pure: 'connected', 'disconnected' or None (no agent channel, or libvirt does not say)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for target in root.findall("./devices/channel/target"):
        if target.get("name") == AGENT_CHANNEL:
            return target.get("state")
    return None


def libvirt_macs(xml: str) -> list[tuple[str, str]]:
    """Pure: (type, MAC) of the domain's <interface> elements, in document order."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    result = []
    for iface in root.findall("./devices/interface"):
        mac = iface.find("mac")
        result.append((iface.get("type", ""), (mac.get("address", "") if mac is not None else "").lower()))
    return result


def spec_macs(uid: str, interfaces: Sequence[InterfaceSpec], xml_macs: Sequence[tuple[str, str]]) -> list[str]:
    """Pure: each spec interface's MAC: libvirt's for its own NICs (in order), ours for user-mode ones."""
    own = iter(mac for _type, mac in xml_macs)
    macs = []
    for nic in interfaces:
        if nic.user:
            macs.append(nic.mac_address or user_mac(uid, nic.name))
        else:
            macs.append(next(own, nic.mac_address or ""))
    return macs


def status_interfaces(interfaces: Sequence[InterfaceSpec], macs: Sequence[str],
                      reported: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Pure: status.interfaces from libvirt's interfaceAddresses answer ({guest name: {hwaddr, addrs}}),
    matched to the spec's interfaces by MAC. Link-local and loopback addresses are left out."""
    by_mac: dict[str, tuple[str, list[str]]] = {}
    for guest_name, info in (reported or {}).items():
        if not isinstance(info, Mapping):
            continue
        hwaddr = str(info.get("hwaddr") or "").lower()
        addresses = []
        for addr in info.get("addrs") or []:
            text = str((addr or {}).get("addr") or "")
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                continue
            if ip.is_link_local or ip.is_loopback:
                continue
            addresses.append(text)
        if hwaddr:
            previous = by_mac.get(hwaddr)
            by_mac[hwaddr] = (str(guest_name), (previous[1] if previous else []) + addresses)
    result = []
    for nic, mac in zip(interfaces, macs, strict=True):
        entry: dict[str, Any] = {"name": nic.name}
        if mac:
            entry["macAddress"] = mac
        found = by_mac.get(mac) if mac else None
        if found is not None:
            entry["interfaceName"] = found[0]
            entry["ipAddresses"] = found[1]
        result.append(entry)
    return result


def guest_os(info: Mapping[str, Any]) -> dict[str, str] | None:
    """Pure: status.guestOS from libvirt's guestInfo answer."""
    result = {ours: str(info[theirs]) for theirs, ours in _GUEST_OS_KEYS.items() if info.get(theirs)}
    if info.get("hostname"):
        result["hostname"] = str(info["hostname"])
    return result or None


def read_guest(conn: libvirt.virConnect, uuid: str, uid: str,
               interfaces: Sequence[InterfaceSpec]) -> GuestData | None:
    """Blocking: the guest's data; None when the domain is gone or not running."""
    try:
        dom = conn.lookupByUUIDString(uuid)
        if not dom.isActive():
            return None
        xml = dom.XMLDesc(0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            return None
        raise
    macs = spec_macs(uid, interfaces, libvirt_macs(xml))
    if agent_channel_state(xml) == "connected":
        try:
            dom.agentSetResponseTimeout(AGENT_TIMEOUT, 0)
            reported = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
            info = dom.guestInfo(libvirt.VIR_DOMAIN_GUEST_INFO_OS | libvirt.VIR_DOMAIN_GUEST_INFO_HOSTNAME, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            # Connected channel, silent agent (still starting, or hung): say so, fall back to leases.
            logger.debug("guest agent of %s did not answer: %s", uuid, exc)
            return GuestData(False, status_interfaces(interfaces, macs, _leases(dom)),
                             agent_error=str(exc.get_error_message() or exc))
        return GuestData(True, status_interfaces(interfaces, macs, reported), guest_os(info))
    return GuestData(False, status_interfaces(interfaces, macs, _leases(dom)))


def _leases(dom: libvirt.virDomain) -> Mapping[str, Any]:
    try:
        return dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0) or {}
    except libvirt.libvirtError:
        return {}  # no libvirt network interface, or the driver has no leases (test://)


def qemu_run_state(conn: libvirt.virConnect, uuid: str) -> str | None:
    """Blocking: QEMU's own run state ('internal-error', 'paused', 'running', ...) through a read-only
    QMP query-status; None when it cannot be asked (not a QEMU domain)."""
    try:
        dom = conn.lookupByUUIDString(uuid)
        answer = libvirt_qemu.qemuMonitorCommand(dom, '{"execute":"query-status"}', 0)
    except libvirt.libvirtError:
        return None
    try:
        status = json.loads(answer).get("return", {}).get("status")
    except (ValueError, AttributeError):
        return None
    return str(status) if status else None
