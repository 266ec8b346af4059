"""Blocking domain operations; callers run them through ``Connection.call`` (off the asyncio loop).

Each function takes the live ``virConnect`` first so it can be passed as ``lambda c: fn(c, ...)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from libvirt_operator.hypervisor.connection import (
    DomainNotFound,
    HypervisorError,
    HypervisorUnavailable,
    translate,
)
from libvirt_operator.hypervisor.domain_xml import Owner, parse_owner

logger = logging.getLogger(__name__)

_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | getattr(libvirt, "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA", 0)
)


@dataclass(frozen=True)
class DomainState:
    uuid: str
    name: str
    state: int  # virDomainState
    reason: int

    @property
    def active(self) -> bool:
        return self.state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED,
                                  libvirt.VIR_DOMAIN_NOSTATE)


def lookup(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def state_of(conn: libvirt.virConnect, uuid: str) -> DomainState | None:
    dom = lookup(conn, uuid)
    if dom is None:
        return None
    try:
        return _state(dom)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _state(dom: libvirt.virDomain) -> DomainState:
    # One RPC: name() and UUIDString() are held by the client-side object.
    state, reason = dom.state()
    return DomainState(str(dom.UUIDString()), str(dom.name()), state, reason)


def list_states(conn: libvirt.virConnect) -> dict[str, DomainState]:
    """All domains' states in one libvirt call (the periodic full sync's single listing)."""
    result: dict[str, DomainState] = {}
    try:
        stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        stats = [(dom, {"state.state": dom.state()[0], "state.reason": dom.state()[1]})
                 for dom in conn.listAllDomains(0)]
    for dom, record in stats:
        uuid = dom.UUIDString()
        result[uuid] = DomainState(uuid, dom.name(), int(record.get("state.state", 0)),
                                   int(record.get("state.reason", 0)))
    return result


def owner_of(conn: libvirt.virConnect, uuid: str) -> Owner | None:
    """Ownership proven by our <metadata> in the domain XML; None for anybody else's domain."""
    dom = lookup(conn, uuid)
    if dom is None:
        return None
    return parse_owner(dom.XMLDesc(0))


def xml_of(conn: libvirt.virConnect, uuid: str, flags: int = 0) -> str | None:
    dom = lookup(conn, uuid)
    return None if dom is None else str(dom.XMLDesc(flags))


# The actions below return the domain's state right after them, read on the same worker thread: with
# libvirtd answering at most a few requests per connection at once (max_client_requests), a separate
# lookup queued behind other guests' slow starts is what made creation slower than libvirt alone.


def define(conn: libvirt.virConnect, xml: str) -> DomainState:
    return _state(conn.defineXML(xml))


@dataclass(frozen=True)
class Created:
    state: DomainState
    started: bool
    start_error: HypervisorError | None = None  # defined, but libvirt refused to start it


def define_and_start(conn: libvirt.virConnect, xml: str, *, paused: bool = False) -> Created:
    """A new guest's definition and first start in one worker call: three RPCs where two calls and a
    lookup took five, each of which queued behind other guests' slow starts on a busy host."""
    dom = conn.defineXML(xml)
    try:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
    except libvirt.libvirtError as exc:
        error = translate(exc, "start")
        if isinstance(error, HypervisorUnavailable):
            raise  # the connection broke: Connection.call reports it and reconnects
        return Created(_state(dom), False, error)
    return Created(_state(dom), True)


def start(conn: libvirt.virConnect, uuid: str, *, paused: bool = False) -> DomainState:
    dom = _require(conn, uuid)
    try:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
    except libvirt.libvirtError as exc:
        # Already running: someone (or a racing event) started it. Not an error for us.
        if not (exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and dom.isActive()):
            raise
    return _state(dom)


AGENT_SHUTDOWN_TIMEOUT = 5  # seconds libvirt waits for the agent to take a guest-shutdown


def shutdown(conn: libvirt.virConnect, uuid: str, *, agent: bool = False) -> str:
    """Ask the guest to power off: through the guest agent when ``agent`` (falling back to ACPI when it
    does not take the request), else ACPI. Returns at once with the way used ('agent', 'acpi', or '' when
    there was nothing to stop); the caller polls and destroys after the grace period."""
    return _ask_guest(conn, uuid, "shutdown", agent=agent,
                      by_agent=lambda d: d.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT),
                      by_acpi=lambda d: d.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN),
                      by_default=lambda d: d.shutdown())


def reboot(conn: libvirt.virConnect, uuid: str, *, agent: bool = False) -> str:
    """Ask the guest to reboot: through the guest agent when ``agent`` (ACPI when it refuses), else ACPI.
    Returns the way used ('' when the domain is not running)."""
    return _ask_guest(conn, uuid, "reboot", agent=agent,
                      by_agent=lambda d: d.reboot(libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT),
                      by_acpi=lambda d: d.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN),
                      by_default=lambda d: d.reboot(0))


def _ask_guest(conn: libvirt.virConnect, uuid: str, what: str, *, agent: bool,
               by_agent: Callable[[libvirt.virDomain], object], by_acpi: Callable[[libvirt.virDomain], object],
               by_default: Callable[[libvirt.virDomain], object]) -> str:
    """A request the guest itself carries out: the agent first when asked (ACPI when it refuses), then
    ACPI; a driver without modes (test://) gets its default way. '' when the domain is not running."""
    dom = lookup(conn, uuid)
    if dom is None or not dom.isActive():
        return ""
    if agent:
        try:
            dom.agentSetResponseTimeout(AGENT_SHUTDOWN_TIMEOUT, 0)
            by_agent(dom)
            return "agent"
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return ""
            logger.info("guest agent %s of %s refused (%s): ACPI instead", what, uuid, exc.get_error_message())
    try:
        by_acpi(dom)
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        if code == libvirt.VIR_ERR_OPERATION_INVALID:
            return ""
        if code not in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
            raise
        by_default(dom)
    return "acpi"


def reset(conn: libvirt.virConnect, uuid: str) -> None:
    """Hard reset (the reset button): the fallback of a reboot the guest did not do."""
    dom = lookup(conn, uuid)
    if dom is not None and dom.isActive():
        dom.reset(0)


def destroy(conn: libvirt.virConnect, uuid: str) -> DomainState | None:
    """Hard power-off; idempotent (nova: an already shut-off domain is fine). Returns the state after
    it, None when the domain is gone (a transient one vanishes with its guest)."""
    dom = lookup(conn, uuid)
    if dom is None:
        return None
    try:
        dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        if not (exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and not dom.isActive()):
            raise
    try:
        return _state(dom)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def suspend(conn: libvirt.virConnect, uuid: str) -> DomainState:
    dom = _require(conn, uuid)
    dom.suspend()
    return _state(dom)


def resume(conn: libvirt.virConnect, uuid: str) -> DomainState:
    dom = _require(conn, uuid)
    dom.resume()
    return _state(dom)


def undefine(conn: libvirt.virConnect, uuid: str) -> None:
    """Undefine with managed-save, NVRAM and snapshot metadata; fall back like nova on older libvirt."""
    dom = lookup(conn, uuid)
    if dom is None:
        return
    try:
        dom.undefineFlags(_UNDEFINE_FLAGS)
        return
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        logger.debug("undefineFlags failed for %s (%s); retrying without flags", uuid, exc)
    try:
        if dom.hasManagedSaveImage(0):
            dom.managedSaveRemove(0)
    except libvirt.libvirtError:
        pass
    try:
        dom.undefine()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise


def network_exists(conn: libvirt.virConnect, name: str) -> bool:
    try:
        conn.networkLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return False
        raise
    return True


def _require(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain:
    dom = lookup(conn, uuid)
    if dom is None:
        raise DomainNotFound(f"domain {uuid} not found")
    return dom
