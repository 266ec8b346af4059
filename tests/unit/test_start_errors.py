"""A start libvirt refuses: retried when it may succeed later, else Failed naming the spec field (issue 17)."""

from __future__ import annotations

import errno
from pathlib import Path

import libvirt
import pytest

from libvirt_operator.api.spec import parse_spec
from libvirt_operator.handlers.vm import retried_start_message, start_failure_message
from libvirt_operator.hypervisor.bridges import IFF_UP, BridgeState, bridge_problem, read_bridge
from libvirt_operator.hypervisor.connection import START_ERRORS, Retry, start_retry, translate
from libvirt_operator.hypervisor.domain_xml import field_named_by

# What libvirtd 9.0 answered on this project's CI host (virDomainCreate over qemu:///system), as the
# (code, domain, message, level, str1, str2, str3, int1, int2) tuple libvirt-python carries.
NETWORK_INACTIVE = (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_NETWORK,
                    "Requested operation is not valid: network 'default' is not active", 2,
                    "Requested operation is not valid: %s", "network 'default' is not active", None, -1, -1)
NO_NETWORK = (libvirt.VIR_ERR_NO_NETWORK, libvirt.VIR_FROM_NETWORK,
              "Network not found: no network with matching name 'lan'", 2, "Network not found: %s",
              "no network with matching name 'lan'", None, -1, -1)
NO_BRIDGE = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_NONE,
             "Cannot get interface MTU on 'br7': No such device", 2, "%s",
             "Cannot get interface MTU on 'br7': No such device", None, errno.ENODEV, -1)
QEMU_DIED = (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_QEMU,
             "internal error: qemu unexpectedly closed the monitor: cannot set up guest memory 'pc.ram': "
             "Cannot allocate memory", 2, "internal error: %s",
             "qemu unexpectedly closed the monitor: cannot set up guest memory 'pc.ram': Cannot allocate memory",
             None, -1, -1)

SPEC = parse_spec({
    "nodeName": "n1", "memory": "64Mi",
    "disks": [{"name": "root", "image": "base.qcow2"}, {"name": "data", "size": "1Gi"}],
    "interfaces": [{"name": "nic0", "bridge": "br0"}, {"name": "nic1", "network": "lan"},
                   {"name": "nic2", "network": "default", "macAddress": "52:54:00:00:00:0A"},
                   {"name": "nic3", "bridge": "br7"}],
})
DISK_FILES = {"root": ["/disks/u1/root.qcow2", "/images/base.qcow2"], "data": ["/disks/u1/data.qcow2"]}


def _libvirt_error(raw: tuple[object, ...]) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(str(raw[2]))
    exc.err = raw  # type: ignore[assignment]
    return exc


PERMANENT = [
    "VIR_ERR_OPERATION_INVALID", "VIR_ERR_CONFIG_UNSUPPORTED", "VIR_ERR_NO_NETWORK", "VIR_ERR_INVALID_NETWORK",
    "VIR_ERR_NO_NETWORK_PORT", "VIR_ERR_NO_INTERFACE", "VIR_ERR_INVALID_INTERFACE", "VIR_ERR_INVALID_MAC",
    "VIR_ERR_NO_NWFILTER", "VIR_ERR_NO_NODE_DEVICE", "VIR_ERR_DEVICE_MISSING", "VIR_ERR_NO_STORAGE_POOL",
    "VIR_ERR_NO_STORAGE_VOL", "VIR_ERR_NO_SECRET", "VIR_ERR_NO_SECURITY_MODEL", "VIR_ERR_CPU_INCOMPATIBLE",
    "VIR_ERR_NO_OS", "VIR_ERR_NO_KERNEL", "VIR_ERR_OS_TYPE", "VIR_ERR_XML_ERROR", "VIR_ERR_XML_DETAIL",
    "VIR_ERR_XML_INVALID_SCHEMA", "VIR_ERR_INVALID_ARG", "VIR_ERR_ARGUMENT_UNSUPPORTED", "VIR_ERR_NO_SUPPORT",
    "VIR_ERR_OPERATION_UNSUPPORTED", "VIR_ERR_ACCESS_DENIED", "VIR_ERR_OPERATION_DENIED", "VIR_ERR_AUTH_FAILED",
    "VIR_ERR_HOOK_SCRIPT_FAILED",
]
TRANSIENT = [
    "VIR_ERR_INTERNAL_ERROR", "VIR_ERR_NO_MEMORY", "VIR_ERR_OPERATION_FAILED", "VIR_ERR_OPERATION_TIMEOUT",
    "VIR_ERR_OPERATION_ABORTED", "VIR_ERR_RESOURCE_BUSY", "VIR_ERR_AGENT_UNRESPONSIVE", "VIR_ERR_NO_DOMAIN",
    "VIR_ERR_RPC", "VIR_ERR_NO_CONNECT", "VIR_ERR_INVALID_CONN",
]


@pytest.mark.parametrize("name", PERMANENT)
def test_start_errors_about_the_definition_or_the_host_setup_are_permanent(name: str) -> None:
    assert start_retry(getattr(libvirt, name), libvirt.VIR_FROM_QEMU) == Retry.PERMANENT


@pytest.mark.parametrize("name", TRANSIENT)
def test_start_errors_about_resources_locks_and_timing_are_retried(name: str) -> None:
    assert start_retry(getattr(libvirt, name), libvirt.VIR_FROM_QEMU) == Retry.TRANSIENT


def test_the_table_sorts_exactly_the_codes_the_tests_name() -> None:
    assert {code for code, kind in START_ERRORS.items() if kind == Retry.PERMANENT} == {
        getattr(libvirt, n) for n in PERMANENT}
    assert {code for code, kind in START_ERRORS.items() if kind == Retry.TRANSIENT} == {
        getattr(libvirt, n) for n in TRANSIENT}


@pytest.mark.parametrize(("err", "expected"), [
    (errno.ENODEV, Retry.PERMANENT),  # a missing bridge
    (errno.ENOENT, Retry.PERMANENT),  # a missing file
    (errno.EACCES, Retry.PERMANENT),  # a disk QEMU may not open
    (errno.EINVAL, Retry.PERMANENT),  # "Cannot set interface MTU": a device that is no bridge
    (errno.ENOMEM, Retry.TRANSIENT),
    (errno.EAGAIN, Retry.TRANSIENT),
    (errno.EBUSY, Retry.TRANSIENT),
    (errno.ENOSPC, Retry.TRANSIENT),
    (None, Retry.TRANSIENT),
])
def test_system_errors_are_sorted_by_their_errno(err: int | None, expected: Retry) -> None:
    assert start_retry(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_NONE, err) == expected


def test_unknown_codes_and_a_broken_link_are_retried() -> None:
    assert start_retry(None) == Retry.TRANSIENT
    assert start_retry(10_000, libvirt.VIR_FROM_QEMU) == Retry.TRANSIENT
    assert start_retry(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, errno.ENOENT) == Retry.TRANSIENT


@pytest.mark.parametrize(("raw", "retry", "detail"), [
    (NETWORK_INACTIVE, Retry.PERMANENT, "network 'default' is not active"),
    (NO_NETWORK, Retry.PERMANENT, "no network with matching name 'lan'"),
    (NO_BRIDGE, Retry.PERMANENT, "Cannot get interface MTU on 'br7': No such device"),
    (QEMU_DIED, Retry.TRANSIENT, "qemu unexpectedly closed the monitor: cannot set up guest memory 'pc.ram': "
                                 "Cannot allocate memory"),
], ids=["network inactive", "no network", "no bridge", "qemu died"])
def test_libvirtds_own_answers_are_translated_and_sorted(raw: tuple[object, ...], retry: Retry,
                                                          detail: str) -> None:
    error = translate(_libvirt_error(raw), "start")
    assert start_retry(error.code, error.domain, error.errno) == retry
    assert error.detail == detail
    assert str(error).startswith("start: ")


@pytest.mark.parametrize(("text", "field"), [
    ("network 'default' is not active", "spec.interfaces[2].network"),
    ("no network with matching name 'lan'", "spec.interfaces[1].network"),
    ("Cannot get interface MTU on 'br7': No such device", "spec.interfaces[3].bridge"),
    ("Cannot get interface MTU on 'br0': No such device", "spec.interfaces[0].bridge"),
    ("MAC address '52:54:00:00:00:0a' already in use", "spec.interfaces[2].macAddress"),
    ("Cannot access storage file '/disks/u1/data.qcow2': No such file or directory", "spec.disks[1]"),
    ("Cannot access backing file '/images/base.qcow2' of storage file '/disks/u1/root.qcow2'",
     "spec.disks[0].image"),
    ("Cannot set interface MTU on 'vnet1': Invalid argument", None),
    ("Domain requires KVM, but it is not available", None),
    ("network 'other' is not active", None),
])
def test_the_field_a_libvirt_message_is_about_is_found_by_the_names_it_quotes(text: str,
                                                                               field: str | None) -> None:
    assert field_named_by(text, SPEC, DISK_FILES) == field


def test_the_failure_message_names_the_field_and_the_node() -> None:
    assert start_failure_message("network 'default' is not active", "spec.interfaces[0].network", "n1") == (
        "spec.interfaces[0].network: network 'default' is not active on node n1")
    assert start_failure_message("Domain requires KVM, but it is not available", None, "n1") == (
        "libvirt refused to start the domain on node n1: Domain requires KVM, but it is not available")


@pytest.mark.parametrize(("state", "problem"), [
    (BridgeState(exists=False, is_bridge=False, up=False), "does not exist"),
    (BridgeState(exists=True, is_bridge=False, up=True), "is not a bridge"),
    (BridgeState(exists=True, is_bridge=True, up=False), "is down"),
    (BridgeState(exists=True, is_bridge=True, up=True), None),
])
def test_a_bridge_must_exist_be_a_bridge_and_be_up(state: BridgeState, problem: str | None) -> None:
    assert bridge_problem(state) == problem


def test_bridge_state_is_read_from_sysfs(tmp_path: Path) -> None:
    (tmp_path / "br0" / "bridge").mkdir(parents=True)
    (tmp_path / "br0" / "flags").write_text(f"{hex(0x1000 | IFF_UP)}\n")
    (tmp_path / "br1" / "bridge").mkdir(parents=True)
    (tmp_path / "br1" / "flags").write_text("0x1002\n")  # what `ip link add br1 type bridge` leaves: down
    (tmp_path / "eth0").mkdir()
    (tmp_path / "eth0" / "flags").write_text("0x1003\n")
    assert read_bridge("br0", tmp_path) == BridgeState(exists=True, is_bridge=True, up=True)
    assert read_bridge("br1", tmp_path) == BridgeState(exists=True, is_bridge=True, up=False)
    assert read_bridge("eth0", tmp_path) == BridgeState(exists=True, is_bridge=False, up=True)
    assert read_bridge("nope", tmp_path) == BridgeState(exists=False, is_bridge=False, up=False)


# What libvirtd 9.0 with QEMU 7.2 answered here when a user-mode forward's host port was already bound.
HOST_PORT_BUSY = ("internal error: process exited while connecting to monitor: 2026-12-01T16:16:39.423128Z "
                  "qemu-system-x86_64: -netdev user,id=lvouser0,restrict=on,hostfwd=tcp:127.0.0.1:43199-:22: "
                  "Could not set up host forwarding rule 'tcp:127.0.0.1:43199-:22'")
FORWARDING = parse_spec({
    "nodeName": "n1", "memory": "64Mi",
    "interfaces": [{"name": "lan", "network": "default"},
                   {"name": "user", "user": {"portForwards": [{"port": 80, "hostPort": 8080},
                                                              {"port": 22, "hostPort": 43199}]}}],
})


def test_a_taken_host_port_is_retried_and_its_message_names_the_forward_and_the_node() -> None:
    assert start_retry(libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_QEMU) == Retry.TRANSIENT  # may free up
    message = retried_start_message(HOST_PORT_BUSY, FORWARDING, "n1")
    assert message.startswith("spec.interfaces[1].user.portForwards[1].hostPort: host port 43199/TCP of "
                              "127.0.0.1 is already in use on node n1"), message
    other = HOST_PORT_BUSY.replace("43199", "5000")  # a port this spec does not forward: QEMU's own words
    assert retried_start_message(other, FORWARDING, "n1") == other
    assert retried_start_message(QEMU_DIED[2], FORWARDING, "n1") == QEMU_DIED[2]
