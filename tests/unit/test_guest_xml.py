"""Domain XML for real guests: direct kernel boot, the NoCloud seed CD-ROM, the logged serial console, the
guest agent's channel, and user-mode interfaces with ports forwarded from 127.0.0.1 only."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import pytest

from libvirt_operator.api.spec import parse_spec
from libvirt_operator.hypervisor import hardware
from libvirt_operator.hypervisor.domain_xml import (
    AGENT_CHANNEL,
    QEMU_NAMESPACE,
    Owner,
    build_domain_xml,
    user_mac,
    user_netdev_args,
)
from libvirt_operator.hypervisor.storage import Storage, StorageError
from tests.unit.test_domain_xml import ALLOWED, assert_only_intended
from tests.unit.test_spec import GUEST

STORAGE = Path("/var/lib/libvirt-operator-test/disks")
IMAGES = Path("/var/lib/libvirt-operator-test/images")
Q = f"{{{QEMU_NAMESPACE}}}"


def owner() -> Owner:
    return Owner(namespace="default", name="cloud-1", uid=str(uuid.uuid4()), node="worker-1")


def build(own: Owner, spec_dict: dict[str, Any] | None = None, **kwargs: Any) -> str:
    spec = parse_spec(spec_dict or GUEST)
    options: dict[str, Any] = {
        "domain_type": "test", "allowed_dirs": [STORAGE, IMAGES],
        "disk_paths": {d.name: STORAGE / own.uid / f"{d.name}.qcow2" for d in spec.disks},
        "seed": STORAGE / own.uid / "cidata.iso", "console_log": STORAGE / own.uid / "console.log",
        "kernel": IMAGES / "vmlinuz", "initrd": IMAGES / "initrd.img"}
    options.update(kwargs)
    return build_domain_xml(owner=own, spec=spec, **options)


def test_a_guest_gets_kernel_boot_seed_cdrom_console_log_agent_channel_and_user_networking(
        conn: libvirt.virConnect) -> None:
    own = owner()
    xml = build(own)
    assert_only_intended(xml, own, parse_spec(GUEST), [STORAGE])
    root = ET.fromstring(xml)
    assert root.findtext("os/kernel") == str(IMAGES / "vmlinuz")
    assert root.findtext("os/initrd") == str(IMAGES / "initrd.img")
    assert root.findtext("os/cmdline") == "root=/dev/vda rw console=ttyS0"
    assert root.find("os/boot") is None
    assert root.find("os").get("firmware") == "efi"  # type: ignore[union-attr]
    cdrom = root.find("devices/disk[@device='cdrom']")
    assert cdrom is not None and cdrom.find("readonly") is not None
    assert cdrom.find("source").get("file") == str(STORAGE / own.uid / "cidata.iso")  # type: ignore[union-attr]
    assert dict(cdrom.find("target").attrib) == {"dev": "hdc", "bus": "ide"}  # type: ignore[union-attr]
    log = root.find("devices/serial/log")
    assert log is not None and log.get("file") == str(STORAGE / own.uid / "console.log")
    assert [t.get("name") for t in root.findall("devices/channel/target")] == [AGENT_CHANNEL]
    # Two libvirt NICs (network, bridge); the user-mode one is QEMU's.
    assert [i.get("type") for i in root.findall("devices/interface")] == ["network", "bridge"]
    args = [a.get("value") for a in root.findall(f"{Q}commandline/{Q}arg")]
    mac = user_mac(own.uid, "ssh")
    assert args == ["-netdev", "user,id=lvouser0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,"
                               "hostfwd=udp:127.0.0.1:5353-:53",
                    "-device", f"virtio-net-pci,netdev=lvouser0,mac={mac},bus=pci.0,addr=0x1e"]
    dom = conn.defineXML(xml)  # libvirt takes it
    try:
        assert "console.log" in dom.XMLDesc(0)
    finally:
        dom.undefine()


def test_a_vm_without_guest_features_still_gets_the_agent_channel_and_a_serial_console() -> None:
    own = owner()
    spec = {"nodeName": "worker-1", "memory": "64Mi"}
    root = ET.fromstring(build(own, spec, seed=None, kernel=None, initrd=None))
    assert root.find("devices/disk") is None and root.find("os/kernel") is None
    assert root.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    assert root.find(f"{Q}commandline") is None and "xmlns:qemu" not in build(own, spec, seed=None, kernel=None)
    assert [t.get("name") for t in root.findall("devices/channel/target")] == [AGENT_CHANNEL]


def test_forwards_bind_only_127_0_0_1_and_the_guest_reaches_nothing_else() -> None:
    spec = parse_spec(GUEST)
    nics = [n for n in spec.interfaces if n.user]
    args = user_netdev_args("u", nics)
    netdev = args[1]
    assert "restrict=on" in netdev
    forwards = [part for part in netdev.split(",") if part.startswith("hostfwd=")]
    assert forwards and all(":127.0.0.1:" in f for f in forwards)


def test_user_macs_are_stable_unicast_and_differ_per_interface() -> None:
    a, b = user_mac("UID-1", "net0"), user_mac("uid-1", "net1")
    assert a == user_mac("uid-1", "net0") and a != b
    assert a.startswith("52:54:00:") and len(a.split(":")) == 6
    spec = parse_spec({**GUEST, "interfaces": [{"name": "n", "user": {}, "macAddress": "52:54:00:aa:bb:cc"}]})
    assert "mac=52:54:00:aa:bb:cc" in user_netdev_args("u", spec.interfaces)[3]


@pytest.mark.parametrize("what", ["seed", "console_log", "kernel", "initrd"])
def test_guest_files_outside_the_allowed_directories_are_refused(what: str) -> None:
    with pytest.raises(ValueError, match="outside the allowed directories"):
        build(owner(), **{what: Path("/etc/shadow")})


def test_kernel_boot_without_the_resolved_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match="kernel"):
        build(owner(), kernel=None)


@pytest.mark.parametrize(("change", "differs"), [
    ({"boot": {**GUEST["boot"], "cmdline": "quiet"}}, True),
    ({"interfaces": [{"name": "ssh", "user": {"portForwards": [{"port": 22, "hostPort": 2223}]}}]}, True),
    ({"firmware": "bios"}, True),
    ({"cloudInit": {"userData": "#cloud-config\nruncmd: []\n"}}, False),  # the seed's file, not the domain
])
def test_the_hardware_fingerprint_sees_boot_and_forward_changes(change: dict[str, Any], differs: bool) -> None:
    own = owner()
    before = build(own)
    after = build(own, {**GUEST, **change})
    assert hardware.differs(after, before) is differs


def test_boot_files_resolve_inside_the_image_directory_only(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "images", tmp_path / "disks")
    (tmp_path / "images" / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "outside").write_bytes(b"secret")
    (tmp_path / "images" / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "images" / "dir").mkdir()
    assert storage.resolve_boot_file("vmlinuz", "spec.boot.kernel") == (tmp_path / "images" / "vmlinuz").resolve()
    for name, message in (("link", "outside the image directory"), ("missing", "not found"),
                          ("dir", "not a regular file"), ("../outside", "file name")):
        with pytest.raises(StorageError, match=message) as caught:
            storage.resolve_boot_file(name, "spec.boot.initrd")
        assert caught.value.field == "spec.boot.initrd"


def test_every_element_the_guest_features_add_is_allowed() -> None:
    # The hostile-input property tests of test_domain_xml check against the same table.
    for path in ("domain/os/kernel", "domain/devices/channel/target", f"domain/{Q}commandline/{Q}arg"):
        assert path in ALLOWED
