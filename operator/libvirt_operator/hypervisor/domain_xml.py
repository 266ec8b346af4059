"""Domain XML: built from a validated spec with ElementTree (never string formatting), and read back.

The ``<metadata>`` block records who owns the domain (namespace, name, uid, node) and which disk files the
operator created. Ownership is only ever proven from that block, and only when its uid is also the
domain's UUID, so a domain someone else defined is never mistaken for ours.

Lifecycle actions: ``on_poweroff=destroy`` and ``on_reboot=restart`` are libvirt's usual pair (a guest
reboot stays a reboot, not a stop). ``on_crash=destroy``: on a guest panic (reported through the pvpanic
device) libvirt emits CRASHED/PANICKED, then stops the domain with STOPPED/CRASHED (shutoff reason
CRASHED), so the run strategy sees a crash rather than a guest paused forever. A QEMU process that dies
(killed) is reported by libvirt as STOPPED/FAILED with shutoff reason CRASHED whatever ``on_crash`` says.

Every guest gets the QEMU guest agent's virtio-serial channel and a serial console (a pty, for libvirt's
console stream) whose output libvirt also logs to a file; with qemu.conf's default ``stdio_handler =
"logd"`` virtlogd writes it and rotates it at its ``max_size`` (2 MiB, ``max_backups`` 3), so the log on
the node stays bounded.

User-mode interfaces: libvirt 9.0 forwards ports of ``<interface type='user'>`` only with passt; QEMU's own
user-mode network (slirp) is passed through ``<qemu:commandline>`` instead, ``restrict=on`` (the guest gets
DHCP and the forwarded ports, nothing of it leaves QEMU) with every forward bound to 127.0.0.1. Its NIC
sits in a PCI slot libvirt never picks for its own devices (it fills them from slot 2 up).
"""

from __future__ import annotations

import hashlib
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from libvirt_operator.api.constants import XML_NAMESPACE, XML_PREFIX
from libvirt_operator.api.spec import InterfaceSpec, VMSpec

DOMAIN_TYPES = ("kvm", "qemu", "test")
AGENT_CHANNEL = "org.qemu.guest_agent.0"
QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
# QEMU device names of the models, for user-mode NICs given on QEMU's command line.
_QEMU_NIC_DEVICES = {"virtio": "virtio-net-pci", "e1000": "e1000", "rtl8139": "rtl8139"}
_USER_NIC_FIRST_SLOT = 0x1E  # counting down; libvirt allocates from 0x02 up
# libvirt names files after the domain (e.g. /var/log/libvirt/qemu/<name>.log): stay below NAME_MAX.
MAX_DOMAIN_NAME = 240

_NS = f"{{{XML_NAMESPACE}}}"
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SIMPLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # arch and machine type names
# Characters XML 1.0 cannot carry at all (ElementTree would write them raw and produce broken XML).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

_BUS_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd"}
_MAX_DISKS_PER_PREFIX = 26  # vda..vdz / sda..sdz


@dataclass(frozen=True)
class Owner:
    namespace: str
    name: str
    uid: str
    node: str


def domain_name(namespace: str, name: str) -> str:
    """``namespace_name``: "_" cannot occur in either part (DNS-1123), so the split is unambiguous."""
    return f"{namespace}_{name}"


def build_domain_xml(
    *,
    owner: Owner,
    spec: VMSpec,
    domain_type: str,
    disk_paths: Mapping[str, Path],
    allowed_dirs: Sequence[Path],
    emulator: str | None = None,
    arch: str = "x86_64",
    machine: str | None = None,
    seed: Path | None = None,
    console_log: Path | None = None,
    kernel: Path | None = None,
    initrd: Path | None = None,
) -> str:
    """The domain definition for ``spec``; raises ValueError for anything that must not reach libvirt.

    ``seed``: the NoCloud ISO, attached read-only as an IDE CD-ROM (the machine is pc: Debian's cloud kernel
    has no AHCI, so a SATA CD-ROM would be invisible to it). ``console_log``: where libvirt logs the serial
    console. ``kernel``, ``initrd``: resolved files for ``spec.boot``. Every path must lie in ``allowed_dirs``.
    """
    _check_owner(owner)
    if domain_type not in DOMAIN_TYPES:
        raise ValueError(f"domain type must be one of {', '.join(DOMAIN_TYPES)}, not {domain_type!r}")
    if not _SIMPLE.fullmatch(arch):
        raise ValueError(f"invalid architecture {arch!r}")
    if machine is not None and not _SIMPLE.fullmatch(machine):
        raise ValueError(f"invalid machine type {machine!r}")
    if emulator is not None and (not Path(emulator).is_absolute() or _NOT_XML.search(emulator)):
        raise ValueError(f"emulator must be an absolute path, not {emulator!r}")
    sources = _disk_sources(spec, disk_paths, allowed_dirs)
    for what, extra in (("seed", seed), ("console log", console_log), ("kernel", kernel), ("initrd", initrd)):
        if extra is not None:
            _confined(Path(extra), allowed_dirs, what)
    if spec.boot is not None and kernel is None:
        raise ValueError("spec.boot needs the kernel's resolved file")

    domain = ET.Element("domain", type=domain_type)
    user_nics = [nic for nic in spec.interfaces if nic.user]
    if user_nics:
        domain.set("xmlns:qemu", QEMU_NAMESPACE)
    ET.SubElement(domain, "name").text = domain_name(owner.namespace, owner.name)
    ET.SubElement(domain, "uuid").text = owner.uid.lower()
    _metadata(domain, owner, spec, sources)

    kib = str(-(-spec.memory_bytes // 1024))
    ET.SubElement(domain, "memory", unit="KiB").text = kib
    ET.SubElement(domain, "currentMemory", unit="KiB").text = kib
    ET.SubElement(domain, "vcpu", placement="static").text = str(spec.cores)

    os_el = ET.SubElement(domain, "os")
    if spec.firmware == "uefi":
        os_el.set("firmware", "efi")  # libvirt picks OVMF from the host's firmware descriptors
    os_type = ET.SubElement(os_el, "type", arch=arch)
    if machine is not None:
        os_type.set("machine", machine)
    os_type.text = "hvm"
    if kernel is not None:
        ET.SubElement(os_el, "kernel").text = str(kernel)
        if initrd is not None:
            ET.SubElement(os_el, "initrd").text = str(initrd)
        if spec.boot is not None and spec.boot.cmdline is not None:
            ET.SubElement(os_el, "cmdline").text = spec.boot.cmdline
    else:
        ET.SubElement(os_el, "boot", dev="hd")

    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(domain, "clock", offset="utc")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"

    devices = ET.SubElement(domain, "devices")
    if emulator is not None:
        ET.SubElement(devices, "emulator").text = emulator
    _disks(devices, spec, sources)
    if seed is not None:
        cdrom = ET.SubElement(devices, "disk", type="file", device="cdrom")
        ET.SubElement(cdrom, "driver", name="qemu", type="raw")
        ET.SubElement(cdrom, "source", file=str(Path(seed).resolve()))
        ET.SubElement(cdrom, "target", dev="hdc", bus="ide")
        ET.SubElement(cdrom, "readonly")
    _interfaces(devices, spec)
    serial = ET.SubElement(devices, "serial", type="pty")
    if console_log is not None:
        ET.SubElement(serial, "log", file=str(Path(console_log).resolve()), append="on")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    channel = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name=AGENT_CHANNEL)
    # pvpanic: lets QEMU tell libvirt about a guest kernel panic, so on_crash applies.
    ET.SubElement(devices, "panic", model="isa")
    if user_nics:
        _user_interfaces(domain, owner.uid, user_nics)

    ET.indent(domain)
    xml = ET.tostring(domain, encoding="unicode")
    # ElementTree escapes metacharacters but writes control characters and lone surrogates as they are,
    # which would make the document invalid; nothing legitimate carries them.
    if _NOT_XML.search(xml):
        raise ValueError("refusing to build domain XML: a value contains characters XML cannot carry")
    return xml


def _check_owner(owner: Owner) -> None:
    # Kubernetes guarantees these shapes; re-checking keeps a misbehaving API (or caller) from putting
    # anything unexpected into the domain name, which libvirt also uses for file names on the host.
    if not (_LABEL.fullmatch(owner.namespace) and len(owner.namespace) <= 63):
        raise ValueError(f"namespace {owner.namespace!r} is not a DNS-1123 label")
    if not (_SUBDOMAIN.fullmatch(owner.name) and len(owner.name) <= 253):
        raise ValueError(f"name {owner.name!r} is not a DNS-1123 subdomain")
    if not (_SUBDOMAIN.fullmatch(owner.node) and len(owner.node) <= 253):
        raise ValueError(f"node name {owner.node!r} is not a DNS-1123 subdomain")
    if len(domain_name(owner.namespace, owner.name)) > MAX_DOMAIN_NAME:
        raise ValueError(f"namespace and name together are too long for a libvirt domain name "
                         f"(at most {MAX_DOMAIN_NAME} characters)")
    if not _is_uuid(owner.uid):
        raise ValueError(f"uid {owner.uid!r} is not a UUID (it becomes the domain UUID)")


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def _confined(path: Path, allowed_dirs: Sequence[Path], what: str) -> Path:
    resolved = path.resolve()
    roots = [Path(d).resolve() for d in allowed_dirs]
    if not any(resolved != root and resolved.is_relative_to(root) for root in roots):
        raise ValueError(f"{what}: {resolved} is outside the allowed directories")
    if _NOT_XML.search(str(resolved)):
        raise ValueError(f"{what}: path contains characters XML cannot carry")
    return resolved


def user_mac(uid: str, interface: str) -> str:
    """Pure: a stable MAC (QEMU's 52:54:00 prefix) for a user-mode NIC the spec gives none: libvirt does
    not see these NICs, so it neither generates nor reports one, and the status needs it."""
    tail = hashlib.sha256(f"{uid.lower()}/{interface}".encode()).digest()[:3]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def user_netdev_args(uid: str, nics: Sequence[InterfaceSpec]) -> list[str]:
    """Pure: QEMU's arguments for the user-mode NICs (validated integers and names only, no free text)."""
    args: list[str] = []
    for index, nic in enumerate(nics):
        netdev = f"lvouser{index}"
        forwards = "".join(f",hostfwd={f.protocol.lower()}:127.0.0.1:{int(f.host_port)}-:{int(f.port)}"
                           for f in nic.port_forwards)
        mac = nic.mac_address or user_mac(uid, nic.name)
        slot = _USER_NIC_FIRST_SLOT - index
        args += ["-netdev", f"user,id={netdev},restrict=on{forwards}",
                 "-device", f"{_QEMU_NIC_DEVICES[nic.model]},netdev={netdev},mac={mac},bus=pci.0,addr={slot:#x}"]
    return args


def _user_interfaces(domain: ET.Element, uid: str, nics: Sequence[InterfaceSpec]) -> None:
    commandline = ET.SubElement(domain, "qemu:commandline")
    for arg in user_netdev_args(uid, nics):
        ET.SubElement(commandline, "qemu:arg", value=arg)


def _disk_sources(spec: VMSpec, disk_paths: Mapping[str, Path], allowed_dirs: Sequence[Path]) -> dict[str, Path]:
    """Each disk's resolved file, proven to lie inside one of ``allowed_dirs``. Touches the file system."""
    if not spec.disks:
        return {}
    roots = [Path(d).resolve() for d in allowed_dirs]
    sources: dict[str, Path] = {}
    for disk in spec.disks:
        if disk.name not in disk_paths:
            raise ValueError(f"no disk file for disk {disk.name!r}")
        # Resolve so that a symlink cannot point the guest at a host file or device; the resolved path
        # is what goes into the XML, so what was checked is what QEMU opens.
        path = Path(disk_paths[disk.name]).resolve()
        if not any(path != root and path.is_relative_to(root) for root in roots):
            raise ValueError(f"disk {disk.name!r}: {path} is outside the allowed directories")
        if _NOT_XML.search(str(path)):
            raise ValueError(f"disk {disk.name!r}: path contains characters XML cannot carry")
        sources[disk.name] = path
    return sources


def _metadata(domain: ET.Element, owner: Owner, spec: VMSpec, sources: Mapping[str, Path]) -> None:
    metadata = ET.SubElement(domain, "metadata")
    # Prefixed names written literally, with the namespace declared on <lvo:instance> itself: the form
    # libvirt's own metadata API stores (ElementTree would hoist the declaration to <domain>).
    instance = ET.SubElement(metadata, f"{XML_PREFIX}:instance", {f"xmlns:{XML_PREFIX}": XML_NAMESPACE})
    ET.SubElement(instance, f"{XML_PREFIX}:owner", namespace=owner.namespace, name=owner.name,
                  uid=owner.uid.lower(), node=owner.node)
    disks = ET.SubElement(instance, f"{XML_PREFIX}:disks")
    for disk in spec.disks:
        ET.SubElement(disks, f"{XML_PREFIX}:disk", name=disk.name, path=str(sources[disk.name]))


def _disks(devices: ET.Element, spec: VMSpec, sources: Mapping[str, Path]) -> None:
    counters = dict.fromkeys(_BUS_PREFIX.values(), 0)
    for disk in spec.disks:
        prefix = _BUS_PREFIX[disk.bus]
        index = counters[prefix]
        if index >= _MAX_DISKS_PER_PREFIX:
            raise ValueError(f"too many disks on {prefix}* devices")
        counters[prefix] = index + 1
        element = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(element, "driver", name="qemu", type="qcow2")
        ET.SubElement(element, "source", file=str(sources[disk.name]))
        ET.SubElement(element, "target", dev=prefix + chr(ord("a") + index), bus=disk.bus)
    if any(disk.bus == "scsi" for disk in spec.disks):
        ET.SubElement(devices, "controller", type="scsi", index="0", model="virtio-scsi")


def _interfaces(devices: ET.Element, spec: VMSpec) -> None:
    for nic in spec.interfaces:
        if nic.user:
            continue  # on QEMU's command line (_user_interfaces)
        if nic.network is not None:
            element = ET.SubElement(devices, "interface", type="network")
            ET.SubElement(element, "source", network=nic.network)
        elif nic.bridge is not None:
            element = ET.SubElement(devices, "interface", type="bridge")
            ET.SubElement(element, "source", bridge=nic.bridge)
        else:
            raise ValueError(f"interface {nic.name!r} has neither a network nor a bridge")
        if nic.mac_address is not None:
            ET.SubElement(element, "mac", address=nic.mac_address)
        ET.SubElement(element, "model", type=nic.model)


def _parse(xml: str) -> ET.Element | None:
    # libvirt never emits a DTD; refusing one rules out entity tricks in XML we did not write.
    if not isinstance(xml, str) or "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    return root if root.tag == "domain" else None


def _instance(root: ET.Element) -> tuple[Owner, ET.Element] | None:
    instance = root.find(f"metadata/{_NS}instance")
    owner_el = None if instance is None else instance.find(f"{_NS}owner")
    if instance is None or owner_el is None:
        return None
    values = [owner_el.get(key) for key in ("namespace", "name", "uid", "node")]
    namespace, name, uid, node = values
    if namespace is None or name is None or uid is None or node is None or not all(values):
        return None
    # The owner uid is the domain UUID by construction; metadata copied into another domain is not proof.
    domain_uuid = (root.findtext("uuid") or "").strip().lower()
    if uid.lower() != domain_uuid:
        return None
    return Owner(namespace=namespace, name=name, uid=uid.lower(), node=node), instance


def parse_owner(xml: str) -> Owner | None:
    """The owner recorded in our metadata; None for foreign domains, missing metadata or garbage."""
    root = _parse(xml)
    if root is None:
        return None
    found = _instance(root)
    return None if found is None else found[0]


def owned_disk_paths(xml: str) -> list[Path]:
    """Disk files the operator created for this domain (from our metadata); empty when not ours."""
    root = _parse(xml)
    found = None if root is None else _instance(root)
    if found is None:
        return []
    paths: list[Path] = []
    for disk in found[1].findall(f"{_NS}disks/{_NS}disk"):
        path = disk.get("path")
        if path and Path(path).is_absolute():
            paths.append(Path(path))
    return paths


_QUOTED = re.compile(r"'([^']{1,4096})'")


# QEMU's answer when a user-mode forward's host port is taken (by another VM's forward or any process).
_HOSTFWD_BUSY = re.compile(r"Could not set up host forwarding rule '(tcp|udp):127\.0\.0\.1:(\d+)-:(\d+)'")


@dataclass(frozen=True)
class BusyHostPort:
    field: str  # spec.interfaces[i].user.portForwards[j].hostPort
    protocol: str
    host_port: int


def busy_host_port(text: str, spec: VMSpec) -> BusyHostPort | None:
    """Pure: the forward of ``spec`` whose host port QEMU could not bind, from its start error."""
    match = _HOSTFWD_BUSY.search(text)
    if match is None:
        return None
    protocol, host_port = match.group(1).upper(), int(match.group(2))
    for index, nic in enumerate(spec.interfaces):
        for forward_index, forward in enumerate(nic.port_forwards):
            if forward.protocol.upper() == protocol and forward.host_port == host_port:
                return BusyHostPort(f"spec.interfaces[{index}].user.portForwards[{forward_index}].hostPort",
                                    protocol, host_port)
    return None


def field_named_by(text: str, spec: VMSpec, disk_files: Mapping[str, Sequence[str]] | None = None) -> str | None:
    """Pure: the spec field a libvirt message is about, by the names it quotes ("network 'default' is not
    active", "Cannot get interface MTU on 'br0'", "Cannot access storage file '/…/root.qcow2'"); None when
    it quotes nothing of the spec. ``disk_files``: by disk name, the disk's own file, then its image's."""
    files = disk_files or {}
    for quoted in _QUOTED.findall(text):
        for index, nic in enumerate(spec.interfaces):
            if nic.network is not None and quoted == nic.network:
                return f"spec.interfaces[{index}].network"
            if nic.bridge is not None and quoted == nic.bridge:
                return f"spec.interfaces[{index}].bridge"
            if nic.mac_address is not None and quoted.lower() == nic.mac_address:
                return f"spec.interfaces[{index}].macAddress"
        for index, disk in enumerate(spec.disks):
            paths = [str(p) for p in files.get(disk.name, ())]
            if paths[:1] == [quoted]:
                return f"spec.disks[{index}]"
            if disk.image is not None and quoted in paths[1:]:
                return f"spec.disks[{index}].image"
    return None
