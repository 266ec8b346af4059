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
    "BootSpec",
    "CloudInitSpec",
    "DiskSpec",
    "InterfaceSpec",
    "Limits",
    "PortForward",
    "SpecError",
    "VMSpec",
    "parse_spec",
]

RUN_STRATEGIES = ("Always", "RerunOnFailure", "Manual", "Halted", "Once")
BUSES = ("virtio", "sata", "scsi")
MODELS = ("virtio", "e1000", "rtl8139")
FIRMWARES = ("bios", "uefi")

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
# cloud-init data lives in the VM object (etcd's limit is 1.5 MB per object): 256 KiB each is plenty for a
# cloud-config and keeps a status message or a seed from growing without bound.
MAX_CLOUD_INIT_BYTES = 262144
MAX_SSH_KEYS = 32
MAX_SSH_KEY_LENGTH = 16384
MAX_CMDLINE_LENGTH = 4096
MAX_GRACE_SECONDS = 3600
MAX_PORT_FORWARDS = 16
MIN_HOST_PORT = 1024  # a guest never takes a privileged port of the node
PROTOCOLS = ("TCP", "UDP")
# An OpenSSH public key line: type, base64 blob, optional comment; one line, no options before the type.
SSH_PUBLIC_KEY = r"(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?"

_SPEC_FIELDS = frozenset({"nodeName", "runStrategy", "paused", "cpu", "memory", "disks", "interfaces",
                          "cloudInit", "sshAuthorizedKeys", "sshAuthorizedKeysSecretRef", "boot",
                          "terminationGracePeriodSeconds", "firmware"})
_CPU_FIELDS = frozenset({"cores"})
_DISK_FIELDS = frozenset({"name", "image", "size", "bus", "sha256"})
_INTERFACE_FIELDS = frozenset({"name", "network", "bridge", "user", "model", "macAddress"})
_USER_FIELDS = frozenset({"portForwards"})
_FORWARD_FIELDS = frozenset({"port", "hostPort", "protocol"})
_CLOUD_INIT_FIELDS = frozenset({"userData", "networkData", "secretRef"})
_SECRET_REF_FIELDS = frozenset({"name"})
_BOOT_FIELDS = frozenset({"kernel", "initrd", "cmdline"})
_SSH_KEY = re.compile(SSH_PUBLIC_KEY)
URL_SCHEMES = ("http", "https")
MAX_URL_LENGTH = 2048
# An http(s) URL: a host, no credentials, no whitespace or control characters (shared with the CRD).
IMAGE_URL = r"https?://[A-Za-z0-9.\[\]:-]+(/[^\s@]*)?"
SHA256_HEX = r"[0-9a-fA-F]{64}"
# What the CRD lets through as an image: a file name or anything URL-shaped (the node names a refused scheme).
IMAGE_PATTERN = rf"{FILE_NAME}|[A-Za-z][A-Za-z0-9+.-]*://\S+"
_URL = re.compile(IMAGE_URL)
_SHA256 = re.compile(SHA256_HEX)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


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
    image: str | None  # a file name in the image directory, or an http(s) URL (then sha256 is set)
    size_bytes: int | None
    bus: str
    sha256: str | None = None  # lower-case hex

    @property
    def image_url(self) -> str | None:
        return self.image if self.image is not None and is_url(self.image) else None


def is_url(image: str) -> bool:
    return image.startswith(("http://", "https://"))


@dataclass(frozen=True)
class PortForward:
    """A port of 127.0.0.1 on the node forwarded to the guest (user-mode networking)."""

    host_port: int
    port: int  # the guest's
    protocol: str = "TCP"


@dataclass(frozen=True)
class InterfaceSpec:
    name: str
    network: str | None
    bridge: str | None
    model: str
    mac_address: str | None  # lower-case when set
    # User-mode networking (QEMU's own, no host device): the guest gets DHCP and these forwards, nothing else.
    user: bool = False
    port_forwards: tuple[PortForward, ...] = ()


@dataclass(frozen=True)
class CloudInitSpec:
    """NoCloud data: inline, or the keys userdata/networkdata of a Secret in the VM's namespace."""

    user_data: str | None = None
    network_data: str | None = None
    secret_name: str | None = None


@dataclass(frozen=True)
class BootSpec:
    """Direct kernel boot from files in the node's image directory."""

    kernel: str
    initrd: str | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class VMSpec:
    node_name: str
    run_strategy: str
    paused: bool
    cores: int
    memory_bytes: int
    disks: tuple[DiskSpec, ...]
    interfaces: tuple[InterfaceSpec, ...]
    cloud_init: CloudInitSpec | None = None
    ssh_authorized_keys: tuple[str, ...] = ()
    boot: BootSpec | None = None
    termination_grace_seconds: int | None = None  # None: the operator's --shutdown-timeout
    firmware: str = "bios"  # bios (SeaBIOS) | uefi (OVMF, chosen by libvirt's firmware auto-selection)
    ssh_keys_secret: str | None = None  # a Secret whose values are public key lines

    @property
    def wants_seed(self) -> bool:
        """Whether the guest gets a NoCloud seed (cloud-init data or SSH keys to hand over)."""
        return self.cloud_init is not None or bool(self.ssh_authorized_keys) or self.ssh_keys_secret is not None

    def hardware(self) -> tuple[object, ...]:
        """What only a domain redefinition (and a restart) can change; compare to detect RestartRequired."""
        return (self.cores, self.memory_bytes, self.disks, self.interfaces, self.boot, self.wants_seed,
                self.firmware)


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
    cloud_init = _parse_cloud_init(spec)
    keys = _parse_ssh_keys(spec)
    boot = _parse_boot(spec)
    grace = _optional(spec, "terminationGracePeriodSeconds", None)
    if grace is not None:
        field = "spec.terminationGracePeriodSeconds"
        if isinstance(grace, bool) or not isinstance(grace, int):
            raise SpecError(field, f"must be an integer number of seconds, not {_show(grace)}")
        if not 0 <= grace <= MAX_GRACE_SECONDS:
            raise SpecError(field, f"must be between 0 and {MAX_GRACE_SECONDS}, got {grace}")
    keys_secret: str | None = None
    ref = spec.get("sshAuthorizedKeysSecretRef")
    if ref is not None:
        where = "spec.sshAuthorizedKeysSecretRef"
        if not isinstance(ref, Mapping):
            raise SpecError(where, f"must be an object such as {{name: my-keys}}, not {_type_name(ref)}")
        _no_unknown_fields(ref, _SECRET_REF_FIELDS, where)
        keys_secret = _required_str(ref, "name", f"{where}.name")
        _check_pattern(keys_secret, _SUBDOMAIN, 253, f"{where}.name", "a Secret name (DNS-1123 subdomain)")
    firmware = _optional(spec, "firmware", "bios")
    _check_enum(firmware, FIRMWARES, "spec.firmware")
    return VMSpec(
        node_name=node_name,
        run_strategy=run_strategy,
        paused=paused,
        cores=cores,
        memory_bytes=memory,
        disks=disks,
        interfaces=interfaces,
        cloud_init=cloud_init,
        ssh_authorized_keys=keys,
        boot=boot,
        termination_grace_seconds=grace,
        firmware=firmware,
        ssh_keys_secret=keys_secret,
    )


def _parse_cloud_init(spec: Mapping[str, Any]) -> CloudInitSpec | None:
    value = spec.get("cloudInit")
    if value is None:
        return None
    path = "spec.cloudInit"
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be an object, not {_type_name(value)}")
    _no_unknown_fields(value, _CLOUD_INIT_FIELDS, path)
    texts: dict[str, str | None] = {}
    for key in ("userData", "networkData"):
        text = value.get(key)
        if text is not None:
            if not isinstance(text, str):
                raise SpecError(f"{path}.{key}", f"must be a string, not {_type_name(text)}")
            if len(text.encode("utf-8", "surrogatepass")) > MAX_CLOUD_INIT_BYTES:
                raise SpecError(f"{path}.{key}", f"must be at most {MAX_CLOUD_INIT_BYTES} bytes")
        texts[key] = text
    secret_name: str | None = None
    ref = value.get("secretRef")
    if ref is not None:
        if not isinstance(ref, Mapping):
            raise SpecError(f"{path}.secretRef", f"must be an object such as {{name: my-user-data}}, not "
                                                 f"{_type_name(ref)}")
        _no_unknown_fields(ref, _SECRET_REF_FIELDS, f"{path}.secretRef")
        secret_name = _required_str(ref, "name", f"{path}.secretRef.name")
        _check_pattern(secret_name, _SUBDOMAIN, 253, f"{path}.secretRef.name", "a Secret name (DNS-1123 subdomain)")
        if texts["userData"] is not None or texts["networkData"] is not None:
            raise SpecError(f"{path}.secretRef", "cannot be combined with userData or networkData: the Secret's "
                                                 "keys userdata and networkdata hold them")
    return CloudInitSpec(user_data=texts["userData"], network_data=texts["networkData"], secret_name=secret_name)


def _parse_ssh_keys(spec: Mapping[str, Any]) -> tuple[str, ...]:
    items = _optional_list(spec, "sshAuthorizedKeys", "spec.sshAuthorizedKeys")
    if len(items) > MAX_SSH_KEYS:
        raise SpecError("spec.sshAuthorizedKeys", f"has {len(items)} keys; at most {MAX_SSH_KEYS} are allowed")
    keys: list[str] = []
    for index, key in enumerate(items):
        field = f"spec.sshAuthorizedKeys[{index}]"
        if not isinstance(key, str):
            raise SpecError(field, f"must be a string, not {_type_name(key)}")
        if len(key) > MAX_SSH_KEY_LENGTH:
            raise SpecError(field, f"must be at most {MAX_SSH_KEY_LENGTH} characters, got {len(key)}")
        if not _SSH_KEY.fullmatch(key):
            raise SpecError(field, f"{_show(key)} is not one OpenSSH public key line such as "
                                   "'ssh-ed25519 AAAA... user@host'")
        keys.append(key)
    return tuple(keys)


def _parse_boot(spec: Mapping[str, Any]) -> BootSpec | None:
    value = spec.get("boot")
    if value is None:
        return None
    path = "spec.boot"
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be an object, not {_type_name(value)}")
    _no_unknown_fields(value, _BOOT_FIELDS, path)
    kernel = value.get("kernel")
    if kernel is None:
        raise SpecError(f"{path}.kernel", "is required for direct kernel boot (a file in the image directory)")
    _check_file_name(kernel, f"{path}.kernel")
    initrd = _optional(value, "initrd", None)
    if initrd is not None:
        _check_file_name(initrd, f"{path}.initrd")
    cmdline = _optional(value, "cmdline", None)
    if cmdline is not None:
        if not isinstance(cmdline, str):
            raise SpecError(f"{path}.cmdline", f"must be a string, not {_type_name(cmdline)}")
        if len(cmdline) > MAX_CMDLINE_LENGTH:
            raise SpecError(f"{path}.cmdline", f"must be at most {MAX_CMDLINE_LENGTH} characters, got {len(cmdline)}")
        if _CONTROL.search(cmdline) or "\n" in cmdline or "\r" in cmdline:
            raise SpecError(f"{path}.cmdline", "must be one line without control characters")
    return BootSpec(kernel=kernel, initrd=initrd, cmdline=cmdline)


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
        sha256 = _optional(item, "sha256", None)
        if isinstance(image, str) and "://" in image:
            _check_url(image, f"{path}.image")
            if sha256 is None:
                raise SpecError(f"{path}.sha256", "is required with a URL image (the SHA-256 of the file, in hex)")
        elif image is not None:
            _check_file_name(image, f"{path}.image")
        if sha256 is not None:
            if not (isinstance(image, str) and is_url(image)):
                raise SpecError(f"{path}.sha256", "applies to a URL image only")
            _check_pattern(sha256, _SHA256, 64, f"{path}.sha256", "a SHA-256 in hex (64 digits)")
            sha256 = sha256.lower()

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
        disks.append(DiskSpec(name=name, image=image, size_bytes=size, bus=bus, sha256=sha256))
    return tuple(disks)


def _parse_interfaces(spec: Mapping[str, Any], limits: Limits) -> tuple[InterfaceSpec, ...]:
    items = _optional_list(spec, "interfaces", "spec.interfaces")
    maximum = min(SCHEMA_MAX_INTERFACES, limits.max_interfaces)
    if len(items) > maximum:
        raise SpecError("spec.interfaces", f"has {len(items)} interfaces; at most {maximum} are allowed")
    interfaces: list[InterfaceSpec] = []
    seen_names: set[str] = set()
    seen_macs: set[str] = set()
    seen_ports: set[tuple[str, int]] = set()
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
        user = item.get("user")
        if sum(x is not None for x in (network, bridge, user)) != 1:
            raise SpecError(path, "needs exactly one of network (a libvirt network), bridge (a host bridge) or "
                                  "user (user-mode networking with ports forwarded from 127.0.0.1)")
        forwards: tuple[PortForward, ...] = ()
        if user is not None:
            forwards = _parse_user(user, f"{path}.user", seen_ports)
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
                                        mac_address=mac, user=user is not None, port_forwards=forwards))
    return tuple(interfaces)


def _parse_user(user: object, path: str, seen: set[tuple[str, int]]) -> tuple[PortForward, ...]:
    if not isinstance(user, Mapping):
        raise SpecError(path, f"must be an object such as {{portForwards: [{{port: 22, hostPort: 2222}}]}}, not "
                              f"{_type_name(user)}")
    _no_unknown_fields(user, _USER_FIELDS, path)
    items = _optional_list(user, "portForwards", f"{path}.portForwards")
    if len(items) > MAX_PORT_FORWARDS:
        raise SpecError(f"{path}.portForwards", f"has {len(items)} forwards; at most {MAX_PORT_FORWARDS} are allowed")
    forwards: list[PortForward] = []
    for index, item in enumerate(items):
        where = f"{path}.portForwards[{index}]"
        if not isinstance(item, Mapping):
            raise SpecError(where, f"must be an object, not {_type_name(item)}")
        _no_unknown_fields(item, _FORWARD_FIELDS, where)
        port = _port(item, "port", where, 1)
        host_port = _port(item, "hostPort", where, MIN_HOST_PORT)
        protocol = _optional(item, "protocol", "TCP")
        _check_enum(protocol, PROTOCOLS, f"{where}.protocol")
        if (protocol, host_port) in seen:
            raise SpecError(f"{where}.hostPort", f"{protocol} port {host_port} is forwarded twice")
        seen.add((protocol, host_port))
        forwards.append(PortForward(host_port=host_port, port=port, protocol=protocol))
    return tuple(forwards)


def _port(item: Mapping[str, Any], key: str, where: str, minimum: int) -> int:
    value = item.get(key)
    field = f"{where}.{key}"
    if value is None:
        raise SpecError(field, "is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, f"must be an integer, not {_show(value)}")
    if not minimum <= value <= 65535:
        raise SpecError(field, f"must be between {minimum} and 65535, got {value}")
    return value


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


def _check_url(value: str, field: str) -> None:
    scheme = value.split("://", 1)[0].lower()
    if scheme not in URL_SCHEMES:
        raise SpecError(field, f"URL scheme {scheme[:20]!r} is refused: only http and https images are downloaded")
    if len(value) > MAX_URL_LENGTH:
        raise SpecError(field, f"must be at most {MAX_URL_LENGTH} characters, got {len(value)}")
    if not _URL.fullmatch(value):
        raise SpecError(field, f"{_show(value)} is not an http(s) URL (no spaces, no user:password@)")


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
