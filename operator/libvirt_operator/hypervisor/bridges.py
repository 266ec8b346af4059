"""Host bridges as the kernel shows them (sysfs), for interfaces with ``bridge:``.

libvirt starts a guest on a bridge that is down without a word (the guest then has no link), and fails on
a missing one only at start with "Cannot get interface MTU": the node checks both itself, before it
defines or starts a domain, so that the VM ends Failed naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYSFS_NET = Path("/sys/class/net")
IFF_UP = 0x1  # linux/if.h: administratively up


@dataclass(frozen=True)
class BridgeState:
    exists: bool
    is_bridge: bool
    up: bool


def read_bridge(name: str, root: Path = SYSFS_NET) -> BridgeState:
    """Blocking (sysfs reads, no libvirt): the state of the network device ``name``."""
    device = root / name
    if not device.is_dir():
        return BridgeState(exists=False, is_bridge=False, up=False)
    try:
        flags = int((device / "flags").read_text().strip(), 16)
    except (OSError, ValueError):
        flags = 0
    return BridgeState(exists=True, is_bridge=(device / "bridge").is_dir(), up=bool(flags & IFF_UP))


def bridge_problem(state: BridgeState) -> str | None:
    """Pure: why a guest cannot be attached to this device (None: it can)."""
    if not state.exists:
        return "does not exist"
    if not state.is_bridge:
        return "is not a bridge"
    if not state.up:
        return "is down"
    return None
