"""A fingerprint of a domain's hardware, to tell whether a spec change needs a redefinition.

Compares what the VirtualMachine spec controls (memory, vCPUs, disks, interfaces) and nothing libvirt
fills in by itself (addresses, generated MACs, aliases), so that identical specs compare equal.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET


def fingerprint(xml: str) -> tuple[object, ...]:
    root = ET.fromstring(xml)
    memory_el = root.find("memory")
    memory = int(memory_el.text or 0) * _unit(memory_el.get("unit", "KiB")) if memory_el is not None else 0
    vcpu_el = root.find("vcpu")
    vcpus = int(vcpu_el.text or 0) if vcpu_el is not None else 0
    disks = []
    for disk in root.findall("./devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        disks.append((
            source.get("file", "") if source is not None else "",
            target.get("dev", "") if target is not None else "",
            target.get("bus", "") if target is not None else "",
        ))
    interfaces = []
    for iface in root.findall("./devices/interface"):
        source = iface.find("source")
        model = iface.find("model")
        interfaces.append((
            iface.get("type", ""),
            (source.get("network") or source.get("bridge") or "") if source is not None else "",
            model.get("type", "") if model is not None else "",
        ))
    return memory, vcpus, tuple(sorted(disks)), tuple(sorted(interfaces))


def _unit(unit: str) -> int:
    return {"b": 1, "bytes": 1, "KiB": 1024, "k": 1024, "MiB": 1024**2, "M": 1024**2, "GiB": 1024**3,
            "G": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3}.get(unit, 1024)
