"""parse_spec: the node's own validation of a VirtualMachine spec (defence in depth behind the CRD)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from libvirt_operator.api.spec import (
    DiskSpec,
    InterfaceSpec,
    Limits,
    SpecError,
    VMSpec,
    parse_spec,
)

FULL: dict[str, Any] = {
    "nodeName": "worker-1",
    "runStrategy": "RerunOnFailure",
    "paused": True,
    "cpu": {"cores": 2},
    "memory": "512Mi",
    "disks": [
        {"name": "root", "image": "debian-12.qcow2", "size": "10Gi", "bus": "virtio"},
        {"name": "data", "size": 1048576, "bus": "scsi"},
    ],
    "interfaces": [
        {"name": "nic0", "network": "default", "model": "e1000", "macAddress": "52:54:00:AB:cd:01"},
        {"name": "nic1", "bridge": "br0"},
    ],
}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7x+/abc= user@host"
# FULL with every guest feature (cloud-init, keys, kernel boot, user-mode networking, grace period).
GUEST: dict[str, Any] = {
    **FULL,
    "interfaces": [*FULL["interfaces"],
                   {"name": "ssh", "user": {"portForwards": [{"port": 22, "hostPort": 2222},
                                                             {"port": 53, "hostPort": 5353, "protocol": "UDP"}]}}],
    "cloudInit": {"userData": "#cloud-config\nruncmd: [touch /x]\n", "networkData": "version: 2\n"},
    "sshAuthorizedKeys": [KEY],
    "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "root=/dev/vda rw console=ttyS0"},
    "terminationGracePeriodSeconds": 30,
    "firmware": "uefi",
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """GUEST with one field set (``value`` ...) or removed (``DELETE``); path like ``disks.0.image``."""
    spec = copy.deepcopy(GUEST)
    parts = path.split(".")
    target: Any = spec
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last: Any = int(parts[-1]) if isinstance(target, list) else parts[-1]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return spec


DELETE = object()


def test_full_spec_parses_into_typed_values() -> None:
    spec = parse_spec(FULL)
    assert spec == VMSpec(
        node_name="worker-1",
        run_strategy="RerunOnFailure",
        paused=True,
        cores=2,
        memory_bytes=512 * 2**20,
        disks=(
            DiskSpec(name="root", image="debian-12.qcow2", size_bytes=10 * 2**30, bus="virtio"),
            DiskSpec(name="data", image=None, size_bytes=2**20, bus="scsi"),
        ),
        interfaces=(
            InterfaceSpec(name="nic0", network="default", bridge=None, model="e1000",
                          mac_address="52:54:00:ab:cd:01"),
            InterfaceSpec(name="nic1", network=None, bridge="br0", model="virtio", mac_address=None),
        ),
    )


def test_minimal_spec_gets_the_schema_defaults() -> None:
    spec = parse_spec({"nodeName": "dev-node", "memory": "64Mi"})
    assert (spec.run_strategy, spec.paused, spec.cores, spec.disks, spec.interfaces) == (
        "Always", False, 1, (), ())


def test_explicit_nulls_mean_defaults() -> None:
    spec = parse_spec({"nodeName": "n", "memory": "64Mi", "runStrategy": None, "paused": None, "cpu": None,
                       "disks": None, "interfaces": None})
    assert (spec.run_strategy, spec.cores, spec.disks) == ("Always", 1, ())


def test_hardware_changes_with_disks_but_not_with_run_strategy_or_pause() -> None:
    base = parse_spec(GUEST)
    # cloud-init data reaches the guest through the seed (rebuilt, RestartRequired), not the domain.
    assert parse_spec(with_change("cloudInit.userData", "#cloud-config\n")).hardware() == base.hardware()
    assert parse_spec(with_change("terminationGracePeriodSeconds", 5)).hardware() == base.hardware()
    assert parse_spec(with_change("boot.cmdline", "quiet")).hardware() != base.hardware()
    assert parse_spec(with_change("interfaces.2.user.portForwards.0.hostPort", 2223)).hardware() != base.hardware()
    assert parse_spec(with_change("runStrategy", "Halted")).hardware() == base.hardware()
    assert parse_spec(with_change("paused", False)).hardware() == base.hardware()
    assert parse_spec(with_change("disks.1.size", "2Mi")).hardware() != base.hardware()
    assert parse_spec(with_change("cpu", {"cores": 3})).hardware() != base.hardware()
    assert parse_spec(with_change("interfaces.1.model", "rtl8139")).hardware() != base.hardware()


# (description, change path, value, field named in the error)
BAD: list[tuple[str, str, Any, str]] = [
    ("missing node", "nodeName", DELETE, "spec.nodeName"),
    ("node with capitals", "nodeName", "Worker-1", "spec.nodeName"),
    ("node with xml", "nodeName", "a<b>", "spec.nodeName"),
    ("node too long", "nodeName", "a" * 254, "spec.nodeName"),
    ("node not a string", "nodeName", 7, "spec.nodeName"),
    ("unknown strategy", "runStrategy", "Sometimes", "spec.runStrategy"),
    ("strategy wrong case", "runStrategy", "always", "spec.runStrategy"),
    ("paused as string", "paused", "true", "spec.paused"),
    ("cpu as number", "cpu", 2, "spec.cpu"),
    ("zero cores", "cpu.cores", 0, "spec.cpu.cores"),
    ("negative cores", "cpu.cores", -1, "spec.cpu.cores"),
    ("cores as string", "cpu.cores", "2", "spec.cpu.cores"),
    ("cores as bool", "cpu.cores", True, "spec.cpu.cores"),
    ("cores beyond schema", "cpu.cores", 1025, "spec.cpu.cores"),
    ("cores beyond node", "cpu.cores", 65, "spec.cpu.cores"),
    ("huge cores", "cpu.cores", 10**30, "spec.cpu.cores"),
    ("missing memory", "memory", DELETE, "spec.memory"),
    ("memory too small", "memory", "15Mi", "spec.memory"),
    ("memory zero", "memory", 0, "spec.memory"),
    ("memory negative", "memory", "-1Gi", "spec.memory"),
    ("memory beyond node", "memory", "257Ti", "spec.memory"),
    ("memory as float", "memory", 1.5, "spec.memory"),
    ("memory garbage", "memory", "lots", "spec.memory"),
    ("disks not a list", "disks", {"name": "root"}, "spec.disks"),
    ("disk not an object", "disks.0", "root", "spec.disks[0]"),
    ("disk without name", "disks.1.name", DELETE, "spec.disks[1].name"),
    ("disk name with underscore", "disks.1.name", "my_disk", "spec.disks[1].name"),
    ("disk name too long", "disks.1.name", "d" * 64, "spec.disks[1].name"),
    ("duplicate disk names", "disks.1.name", "root", "spec.disks[1].name"),
    ("disk with neither image nor size", "disks.1.size", DELETE, "spec.disks[1]"),
    ("image path", "disks.0.image", "sub/debian.qcow2", "spec.disks[0].image"),
    ("image traversal", "disks.0.image", "../../etc/shadow", "spec.disks[0].image"),
    ("image absolute", "disks.0.image", "/dev/sda", "spec.disks[0].image"),
    ("image dot-dot", "disks.0.image", "..", "spec.disks[0].image"),
    ("image hidden", "disks.0.image", ".secret.qcow2", "spec.disks[0].image"),
    ("image backslash", "disks.0.image", "a\\b", "spec.disks[0].image"),
    ("image with xml", "disks.0.image", "a'/><disk>", "spec.disks[0].image"),
    ("image empty", "disks.0.image", "", "spec.disks[0].image"),
    ("image too long", "disks.0.image", "i" * 256, "spec.disks[0].image"),
    ("image not a string", "disks.0.image", 3, "spec.disks[0].image"),
    ("size zero", "disks.1.size", 0, "spec.disks[1].size"),
    ("size negative", "disks.1.size", "-10Gi", "spec.disks[1].size"),
    ("size below minimum", "disks.1.size", "1Ki", "spec.disks[1].size"),
    ("size beyond node", "disks.1.size", "17Ti", "spec.disks[1].size"),
    ("size wrong type", "disks.1.size", ["1Gi"], "spec.disks[1].size"),
    ("unknown bus", "disks.1.bus", "ide", "spec.disks[1].bus"),
    ("unknown disk field", "disks.1.hostDevice", "/dev/sda", "spec.disks[1].hostDevice"),
    ("unknown spec field", "hostDevices", [{"path": "/dev/sda"}], "spec.hostDevices"),
    ("unknown cpu field", "cpu.sockets", 2, "spec.cpu.sockets"),
    ("interfaces not a list", "interfaces", "nic0", "spec.interfaces"),
    ("interface without name", "interfaces.0.name", DELETE, "spec.interfaces[0].name"),
    ("duplicate interface names", "interfaces.1.name", "nic0", "spec.interfaces[1].name"),
    ("both network and bridge", "interfaces.1.network", "default", "spec.interfaces[1]"),
    ("neither network nor bridge", "interfaces.1.bridge", DELETE, "spec.interfaces[1]"),
    ("bridge with xml", "interfaces.1.bridge", "br0'/><x", "spec.interfaces[1].bridge"),
    ("bridge with shell", "interfaces.1.bridge", "br0;reboot", "spec.interfaces[1].bridge"),
    ("bridge with dollar", "interfaces.1.bridge", "$(id)", "spec.interfaces[1].bridge"),
    ("bridge too long", "interfaces.1.bridge", "b" * 16, "spec.interfaces[1].bridge"),
    ("network with xml", "interfaces.0.network", "<net>", "spec.interfaces[0].network"),
    ("network with quote", "interfaces.0.network", 'a"b', "spec.interfaces[0].network"),
    ("network too long", "interfaces.0.network", "n" * 65, "spec.interfaces[0].network"),
    ("unknown model", "interfaces.0.model", "ne2k_pci", "spec.interfaces[0].model"),
    ("multicast mac", "interfaces.0.macAddress", "01:00:5e:00:00:01", "spec.interfaces[0].macAddress"),
    ("broadcast mac", "interfaces.0.macAddress", "ff:ff:ff:ff:ff:ff", "spec.interfaces[0].macAddress"),
    ("short mac", "interfaces.0.macAddress", "52:54:00:12:34", "spec.interfaces[0].macAddress"),
    ("dashed mac", "interfaces.0.macAddress", "52-54-00-12-34-56", "spec.interfaces[0].macAddress"),
    ("mac read by yaml as number", "interfaces.0.macAddress", 2788550209756, "spec.interfaces[0].macAddress"),
    ("mac with trailing newline", "interfaces.0.macAddress", "52:54:00:12:34:56\n",
     "spec.interfaces[0].macAddress"),
    ("network and user", "interfaces.2.network", "default", "spec.interfaces[2]"),
    ("user not an object", "interfaces.2.user", "slirp", "spec.interfaces[2].user"),
    ("forward without host port", "interfaces.2.user.portForwards.0.hostPort", DELETE,
     "spec.interfaces[2].user.portForwards[0].hostPort"),
    ("privileged host port", "interfaces.2.user.portForwards.0.hostPort", 22,
     "spec.interfaces[2].user.portForwards[0].hostPort"),
    ("host port too big", "interfaces.2.user.portForwards.0.hostPort", 70000,
     "spec.interfaces[2].user.portForwards[0].hostPort"),
    ("guest port zero", "interfaces.2.user.portForwards.0.port", 0, "spec.interfaces[2].user.portForwards[0].port"),
    ("guest port as string", "interfaces.2.user.portForwards.0.port", "22",
     "spec.interfaces[2].user.portForwards[0].port"),
    ("unknown protocol", "interfaces.2.user.portForwards.1.protocol", "SCTP",
     "spec.interfaces[2].user.portForwards[1].protocol"),
    ("cloudInit not an object", "cloudInit", "#cloud-config", "spec.cloudInit"),
    ("userData not a string", "cloudInit.userData", {"runcmd": []}, "spec.cloudInit.userData"),
    ("userData too large", "cloudInit.userData", "#" * 262145, "spec.cloudInit.userData"),
    ("secretRef with inline data", "cloudInit.secretRef", {"name": "seed"}, "spec.cloudInit.secretRef"),
    ("secret name with capitals", "cloudInit", {"secretRef": {"name": "Seed"}}, "spec.cloudInit.secretRef.name"),
    ("secret without name", "cloudInit", {"secretRef": {}}, "spec.cloudInit.secretRef.name"),
    ("unknown cloudInit field", "cloudInit.vendorData", "x", "spec.cloudInit.vendorData"),
    ("keys not a list", "sshAuthorizedKeys", KEY, "spec.sshAuthorizedKeys"),
    ("key not a key", "sshAuthorizedKeys.0", "hello", "spec.sshAuthorizedKeys[0]"),
    ("key with options", "sshAuthorizedKeys.0", 'command="/bin/sh" ' + KEY, "spec.sshAuthorizedKeys[0]"),
    ("two keys in one line", "sshAuthorizedKeys.0", KEY + "\n" + KEY, "spec.sshAuthorizedKeys[0]"),
    ("boot without kernel", "boot.kernel", DELETE, "spec.boot.kernel"),
    ("kernel path", "boot.kernel", "/boot/vmlinuz", "spec.boot.kernel"),
    ("kernel traversal", "boot.kernel", "../vmlinuz", "spec.boot.kernel"),
    ("initrd hidden", "boot.initrd", ".initrd", "spec.boot.initrd"),
    ("cmdline too long", "boot.cmdline", "a" * 4097, "spec.boot.cmdline"),
    ("negative grace", "terminationGracePeriodSeconds", -1, "spec.terminationGracePeriodSeconds"),
    ("grace too long", "terminationGracePeriodSeconds", 3601, "spec.terminationGracePeriodSeconds"),
    ("grace as string", "terminationGracePeriodSeconds", "30", "spec.terminationGracePeriodSeconds"),
    ("unknown firmware", "firmware", "coreboot", "spec.firmware"),
    ("keys secret not an object", "sshAuthorizedKeysSecretRef", "keys", "spec.sshAuthorizedKeysSecretRef"),
    ("keys secret without name", "sshAuthorizedKeysSecretRef", {}, "spec.sshAuthorizedKeysSecretRef.name"),
    ("refused URL scheme", "disks.0.image", "ftp://127.0.0.1/debian.qcow2", "spec.disks[0].image"),
    ("URL with credentials", "disks.0.image", "http://u:p@127.0.0.1/x.qcow2", "spec.disks[0].image"),
    ("URL without sha256", "disks.0.image", "http://127.0.0.1/x.qcow2", "spec.disks[0].sha256"),
    ("sha256 for a file name", "disks.0.sha256", "a" * 64, "spec.disks[0].sha256"),
]


@pytest.mark.parametrize(("change", "value", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_specs_are_refused_naming_the_field(change: str, value: Any, field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(with_change(change, value))
    assert info.value.field == field
    assert str(info.value) == f"{field}: {info.value.message}"
    assert info.value.message


def test_duplicate_mac_addresses_are_refused() -> None:
    spec = with_change("interfaces.1.macAddress", "52:54:00:ab:CD:01")
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert info.value.field == "spec.interfaces[1].macAddress"


def test_spec_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(["nodeName"])  # type: ignore[arg-type]
    assert info.value.field == "spec"


def test_too_many_disks_and_interfaces_are_refused() -> None:
    disks = [{"name": f"d{i}", "size": "1Mi"} for i in range(17)]
    with pytest.raises(SpecError) as info:
        parse_spec(with_change("disks", disks))
    assert info.value.field == "spec.disks"
    nics = [{"name": f"n{i}", "bridge": "br0"} for i in range(9)]
    with pytest.raises(SpecError) as info:
        parse_spec(with_change("interfaces", nics))
    assert info.value.field == "spec.interfaces"


def test_the_nodes_limits_apply_below_the_schemas() -> None:
    limits = Limits(max_vcpus=2, max_memory_mib=512, max_disks=1, max_interfaces=1, max_disk_bytes=2**30)
    ok = {"nodeName": "n", "memory": "512Mi", "cpu": {"cores": 2}, "disks": [{"name": "a", "size": "1Gi"}],
          "interfaces": [{"name": "a", "bridge": "br0"}]}
    parse_spec(ok, limits)
    for change, value, field in [
        ("cpu", {"cores": 3}, "spec.cpu.cores"),
        ("memory", "513Mi", "spec.memory"),
        ("disks", [{"name": "a", "size": "1Mi"}, {"name": "b", "size": "1Mi"}], "spec.disks"),
        ("interfaces", [{"name": "a", "bridge": "b"}, {"name": "b", "bridge": "b"}], "spec.interfaces"),
        ("disks", [{"name": "a", "size": "1025Mi"}], "spec.disks[0].size"),
    ]:
        with pytest.raises(SpecError) as info:
            parse_spec({**ok, change: value}, limits)
        assert info.value.field == field, change
        assert "node" in info.value.message or "at most" in info.value.message


def test_messages_do_not_echo_megabytes_of_input() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(with_change("interfaces.1.bridge", "<" * 1_000_000))
    assert len(str(info.value)) < 300


def test_first_error_wins_in_document_order() -> None:
    spec = with_change("disks.0.bus", "ide")
    spec["interfaces"][0]["model"] = "bad"
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert info.value.field == "spec.disks[0].bus"
