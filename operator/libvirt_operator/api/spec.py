"""Parse and validate a VirtualMachine ``spec`` into frozen dataclasses.

The CRD schema already validates all of this, but the node re-checks every rule (the API server may be
older, another implementation, or the object may predate a schema change) and adds the node's own
limits. The first problem found is raised as a ``SpecError`` naming the field, e.g.
``spec.disks[1].image: ...``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from libvirt_operator.api.quantity import MIB, SpecError, format_mib, parse_quantity

__all__ = [
    "BUSES",
    "MODELS",
    "RUN_STRATEGIES",
    "DiskSpec",
    "InterfaceSpec",
    "Limits",
    "SpecError",
    "VMSpec",
    "parse_spec",
]

RUN_STRATEGIES = ("Always", "RerunOnFailure", "Manual", "Halted")
BUSES = ("virtio", "sata", "scsi")
MODELS = ("virtio", "e1000", "rtl8139")

# Patterns shared with the CRD (tests check the two agree). Matched with fullmatch.
DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = rf"{DNS1123_LABEL}(\.{DNS1123_LABEL})*"
FILE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # no "/", cannot start with "." (so neither "." nor "..")
UNICAST_MAC = r"[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}"

_LABEL = re.compile(DNS1123_LABEL)
_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN)
_FILE_NAME = re.compile(FILE_NAME)
_MAC = re.compile(UNICAST_MAC)

MIN_MEMORY_BYTES = 16 * MIB
MIN_DISK_BYTES = 1 * MIB
MAX_CORES = 1024  # the schema's bound; Limits.max_vcpus is the node's
SCHEMA_MAX_DISKS = 16
SCHEMA_MAX_INTERFACES = 8
MAX_IMAGE_LENGTH = 255
MAX_NETWORK_LENGTH = 64
MAX_BRIDGE_LENGTH = 15  # IFNAMSIZ - 1

_SPEC_FIELDS = frozenset({"nodeName", "runStrategy", "paused", "cpu", "memory", "disks", "interfaces"})
_CPU_FIELDS = frozenset({"cores"})
_DISK_FIELDS = frozenset({"name", "image", "size", "bus"})
_INTERFACE_FIELDS = frozenset({"name", "network", "bridge", "model", "macAddress"})


@dataclass(frozen=True)
class Limits:
    """The node's own maxima (operator settings), on top of the schema's."""

    max_vcpus: int = 64
    max_memory_mib: int = 262144
    max_disks: int = 16
    max_interfaces: int = 8
    max_disk_bytes: int = 16 * 2**40


@dataclass(frozen=True)
class DiskSpec:
    name: str
    image: str | None
    size_bytes: int | None
    bus: str


@dataclass(frozen=True)
class InterfaceSpec:
    name: str
    network: str | None
    bridge: str | None
    model: str
    mac_address: str | None  # lower-case when set


@dataclass(frozen=True)
class VMSpec:
    node_name: str
    run_strategy: str
    paused: bool
    cores: int
    memory_bytes: int
    disks: tuple[DiskSpec, ...]
    interfaces: tuple[InterfaceSpec, ...]

    def hardware(self) -> tuple[object, ...]:
        """What only a domain redefinition (and a restart) can change; compare to detect RestartRequired."""
        return (self.cores, self.memory_bytes, self.disks, self.interfaces)


def parse_spec(spec: Mapping[str, Any], limits: Limits = Limits()) -> VMSpec:
    if not isinstance(spec, Mapping):
        raise SpecError("spec", f"must be an object, not {_type_name(spec)}")
    _no_unknown_fields(spec, _SPEC_FIELDS, "spec")

    node_name = _required_str(spec, "nodeName", "spec.nodeName")
    _check_pattern(node_name, _SUBDOMAIN, 253, "spec.nodeName", "a DNS-1123 subdomain (lower-case node name)")

    run_strategy = _optional(spec, "runStrategy", "Always")
    _check_enum(run_strategy, RUN_STRATEGIES, "spec.runStrategy")

    paused = _optional(spec, "paused", False)
    if not isinstance(paused, bool):
        raise SpecError("spec.paused", f"must be true or false, not {_show(paused)}")

    cores = _parse_cores(spec, limits)
    memory = _parse_memory(spec, limits)
    disks = _parse_disks(spec, limits)
    interfaces = _parse_interfaces(spec, limits)
    return VMSpec(
        node_name=node_name,
        run_strategy=run_strategy,
        paused=paused,
        cores=cores,
        memory_bytes=memory,
        disks=disks,
        interfaces=interfaces,
    )


def _parse_cores(spec: Mapping[str, Any], limits: Limits) -> int:
    cpu = _optional(spec, "cpu", {})
    if not isinstance(cpu, Mapping):
        raise SpecError("spec.cpu", f"must be an object such as {{cores: 2}}, not {_type_name(cpu)}")
    _no_unknown_fields(cpu, _CPU_FIELDS, "spec.cpu")
    cores = _optional(cpu, "cores", 1)
    field = "spec.cpu.cores"
    if isinstance(cores, bool) or not isinstance(cores, int):
        raise SpecError(field, f"must be an integer, not {_show(cores)}")
    if cores < 1:
        raise SpecError(field, f"must be at least 1, got {cores}")
    if cores > MAX_CORES:
        raise SpecError(field, f"must be at most {MAX_CORES}, got {cores}")
    if cores > limits.max_vcpus:
        raise SpecError(field, f"{cores} exceeds this node's maximum of {limits.max_vcpus} vCPUs")
    return cores


def _parse_memory(spec: Mapping[str, Any], limits: Limits) -> int:
    field = "spec.memory"
    if spec.get("memory") is None:
        raise SpecError(field, "is required (for example 512Mi)")
    memory = parse_quantity(spec["memory"], field)
    if memory < MIN_MEMORY_BYTES:
        raise SpecError(field, f"must be at least {format_mib(MIN_MEMORY_BYTES)}, got {_show(spec['memory'])}")
    if memory > limits.max_memory_mib * MIB:
        raise SpecError(
            field,
            f"{_show(spec['memory'])} exceeds this node's maximum of {format_mib(limits.max_memory_mib * MIB)}",
        )
    return memory


def _parse_disks(spec: Mapping[str, Any], limits: Limits) -> tuple[DiskSpec, ...]:
    items = _optional_list(spec, "disks", "spec.disks")
    maximum = min(SCHEMA_MAX_DISKS, limits.max_disks)
    if len(items) > maximum:
        raise SpecError("spec.disks", f"has {len(items)} disks; at most {maximum} are allowed")
    disks: list[DiskSpec] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        path = f"spec.disks[{index}]"
        if not isinstance(item, Mapping):
            raise SpecError(path, f"must be an object, not {_type_name(item)}")
        _no_unknown_fields(item, _DISK_FIELDS, path)
        name = _required_str(item, "name", f"{path}.name")
        _check_pattern(name, _LABEL, 63, f"{path}.name", "a DNS-1123 label")
        if name in seen:
            raise SpecError(f"{path}.name", f"duplicate disk name {name!r}")
        seen.add(name)

        image = _optional(item, "image", None)
        if image is not None:
            _check_file_name(image, f"{path}.image")

        size: int | None = None
        if item.get("size") is not None:
            size = parse_quantity(item["size"], f"{path}.size")
            if size < MIN_DISK_BYTES:
                raise SpecError(f"{path}.size", f"must be at least {format_mib(MIN_DISK_BYTES)}, got "
                                                f"{_show(item['size'])}")
            if size > limits.max_disk_bytes:
                raise SpecError(f"{path}.size", f"{_show(item['size'])} exceeds this node's maximum disk size of "
                                                f"{format_mib(limits.max_disk_bytes)}")
        if image is None and size is None:
            raise SpecError(path, "needs an image, a size, or both")

        bus = _optional(item, "bus", "virtio")
        _check_enum(bus, BUSES, f"{path}.bus")
        disks.append(DiskSpec(name=name, image=image, size_bytes=size, bus=bus))
    return tuple(disks)


def _parse_interfaces(spec: Mapping[str, Any], limits: Limits) -> tuple[InterfaceSpec, ...]:
    items = _optional_list(spec, "interfaces", "spec.interfaces")
    maximum = min(SCHEMA_MAX_INTERFACES, limits.max_interfaces)
    if len(items) > maximum:
        raise SpecError("spec.interfaces", f"has {len(items)} interfaces; at most {maximum} are allowed")
    interfaces: list[InterfaceSpec] = []
    seen_names: set[str] = set()
    seen_macs: set[str] = set()
    for index, item in enumerate(items):
        path = f"spec.interfaces[{index}]"
        if not isinstance(item, Mapping):
            raise SpecError(path, f"must be an object, not {_type_name(item)}")
        _no_unknown_fields(item, _INTERFACE_FIELDS, path)
        name = _required_str(item, "name", f"{path}.name")
        _check_pattern(name, _LABEL, 63, f"{path}.name", "a DNS-1123 label")
        if name in seen_names:
            raise SpecError(f"{path}.name", f"duplicate interface name {name!r}")
        seen_names.add(name)

        network = _optional(item, "network", None)
        bridge = _optional(item, "bridge", None)
        if (network is None) == (bridge is None):
            raise SpecError(path, "needs exactly one of network (a libvirt network) or bridge (a host bridge)")
        if network is not None:
            _check_pattern(network, _FILE_NAME, MAX_NETWORK_LENGTH, f"{path}.network",
                           "a libvirt network name (letters, digits, '.', '_', '-')")
        if bridge is not None:
            _check_pattern(bridge, _FILE_NAME, MAX_BRIDGE_LENGTH, f"{path}.bridge",
                           "a host bridge name (letters, digits, '.', '_', '-')")

        model = _optional(item, "model", "virtio")
        _check_enum(model, MODELS, f"{path}.model")

        mac = _optional(item, "macAddress", None)
        if mac is not None:
            mac = _parse_mac(mac, f"{path}.macAddress")
            if mac in seen_macs:
                raise SpecError(f"{path}.macAddress", f"duplicate MAC address {mac}")
            seen_macs.add(mac)
        interfaces.append(InterfaceSpec(name=name, network=network, bridge=bridge, model=model,
                                        mac_address=mac))
    return tuple(interfaces)


def _parse_mac(value: object, field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 52:54:00:12:34:56 as a base-60 integer.
        raise SpecError(field, "must be a string; quote the MAC address in YAML")
    if not isinstance(value, str):
        raise SpecError(field, f"must be a string, not {_type_name(value)}")
    if not _MAC.fullmatch(value):
        if re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", value):
            raise SpecError(field, f"{_show(value)} is a multicast address; the first octet must be even")
        raise SpecError(field, f"{_show(value)} is not a MAC address like 52:54:00:12:34:56")
    return value.lower()


def _check_file_name(value: object, field: str) -> None:
    if not isinstance(value, str):
        raise SpecError(field, f"must be a string, not {_type_name(value)}")
    if "/" in value or "\\" in value:
        raise SpecError(field, f"{_show(value)} must be a file name in the node's image directory, not a path")
    if value.startswith("."):
        raise SpecError(field, f"{_show(value)} must not start with '.' (no hidden files, no '..')")
    _check_pattern(value, _FILE_NAME, MAX_IMAGE_LENGTH, field, "a file name (letters, digits, '.', '_', '-')")


def _check_pattern(value: object, pattern: re.Pattern[str], max_length: int, field: str, what: str) -> None:
    if not isinstance(value, str):
        raise SpecError(field, f"must be a string, not {_type_name(value)}")
    if not value:
        raise SpecError(field, "must not be empty")
    if len(value) > max_length:
        raise SpecError(field, f"must be at most {max_length} characters, got {len(value)}")
    if not pattern.fullmatch(value):
        raise SpecError(field, f"{_show(value)} is not {what}")


def _check_enum(value: object, allowed: Sequence[str], field: str) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise SpecError(field, f"must be one of {', '.join(allowed)}, not {_show(value)}")


def _required_str(obj: Mapping[str, Any], key: str, field: str) -> str:
    value = obj.get(key)
    if value is None:
        raise SpecError(field, "is required")
    if not isinstance(value, str):
        raise SpecError(field, f"must be a string, not {_type_name(value)}")
    return value


def _optional(obj: Mapping[str, Any], key: str, default: Any) -> Any:
    value = obj.get(key)
    return default if value is None else value


def _optional_list(obj: Mapping[str, Any], key: str, field: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise SpecError(field, f"must be a list, not {_type_name(value)}")
    return list(value)


def _no_unknown_fields(obj: Mapping[Any, Any], known: frozenset[str], path: str) -> None:
    # The schema prunes unknown fields; seeing one means another schema let it through, and
    # silently ignoring e.g. a "hostDevices" field would run a VM other than the one asked for.
    for key in obj:
        if key not in known:
            raise SpecError(f"{path}.{key if isinstance(key, str) and len(key) <= 80 else _show(key)}",
                            "unknown field")


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, Sequence):
        return "a list"
    return type(value).__name__


def _show(value: object, limit: int = 80) -> str:
    """Echo user input in messages (quoted) without letting a 1 MB value into a status field."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
