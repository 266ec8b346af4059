"""Hostile and broken VirtualMachine specs, end to end: kubectl, the API emulator, the operator, real libvirt.

Each one is refused by the CRD schema (the API answers 422 naming the field) or, where only the node can
judge, ends in phase Failed with a message naming the field. Never an operator crash, never a half-defined
domain or a leftover disk directory, never an effect on a VM that was already running. The unit tests
(tests/unit/test_spec.py, test_crd.py, test_storage.py, test_domain_xml.py) check the same rules one layer
down; docs/hardening.md lists every case with the test that checks it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest
from kubernetes.client.rest import ApiException

from libvirt_operator.api.constants import GROUP, PLURAL, VERSION
from tests.conftest import wait_for as poll
from tests.e2e.harness import Cluster, Host, OperatorProcess, unique, vm_manifest

NIC = {"name": "nic0", "bridge": "br0"}

# (case, spec fields replacing the defaults of vm_manifest, field the 422 must name)
SCHEMA_REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("image with a path", {"disks": [{"name": "root", "image": "sub/base.qcow2"}]}, "spec.disks[0].image"),
    ("image with ..", {"disks": [{"name": "root", "image": "../../etc/shadow"}]}, "spec.disks[0].image"),
    ("image ..", {"disks": [{"name": "root", "image": ".."}]}, "spec.disks[0].image"),
    ("absolute image", {"disks": [{"name": "root", "image": "/dev/sda"}]}, "spec.disks[0].image"),
    ("hidden image", {"disks": [{"name": "root", "image": ".secret.qcow2"}]}, "spec.disks[0].image"),
    ("image with xml", {"disks": [{"name": "root", "image": "a'/><disk>"}]}, "spec.disks[0].image"),
    ("empty image", {"disks": [{"name": "root", "image": ""}]}, "spec.disks[0].image"),
    ("bridge with xml", {"interfaces": [{"name": "nic0", "bridge": "br0'/><x"}]}, "spec.interfaces[0].bridge"),
    ("bridge with shell", {"interfaces": [{"name": "nic0", "bridge": "br0;reboot"}]}, "spec.interfaces[0].bridge"),
    ("bridge with $()", {"interfaces": [{"name": "nic0", "bridge": "$(id)"}]}, "spec.interfaces[0].bridge"),
    ("bridge too long", {"interfaces": [{"name": "nic0", "bridge": "b" * 16}]}, "spec.interfaces[0].bridge"),
    ("network with xml", {"interfaces": [{"name": "nic0", "network": "<net>"}]}, "spec.interfaces[0].network"),
    ("network with quote", {"interfaces": [{"name": "nic0", "network": 'a"b'}]}, "spec.interfaces[0].network"),
    ("network with shell", {"interfaces": [{"name": "nic0", "network": "x`reboot`"}]},
     "spec.interfaces[0].network"),
    ("multicast mac", {"interfaces": [{**NIC, "macAddress": "01:00:5e:00:00:01"}]},
     "spec.interfaces[0].macAddress"),
    ("broadcast mac", {"interfaces": [{**NIC, "macAddress": "ff:ff:ff:ff:ff:ff"}]},
     "spec.interfaces[0].macAddress"),
    ("short mac", {"interfaces": [{**NIC, "macAddress": "52:54:00:12:34"}]}, "spec.interfaces[0].macAddress"),
    ("mac with xml", {"interfaces": [{**NIC, "macAddress": "52:54:00:12:34:5'"}]},
     "spec.interfaces[0].macAddress"),
    ("duplicate interface names", {"interfaces": [NIC, NIC]}, "spec.interfaces[1]"),
    ("duplicate disk names", {"disks": [{"name": "a", "size": "1Mi"}, {"name": "a", "size": "1Mi"}]},
     "spec.disks[1]"),
    ("too many disks", {"disks": [{"name": f"d{i}", "size": "1Mi"} for i in range(17)]}, "spec.disks"),
    ("too many interfaces", {"interfaces": [{"name": f"n{i}", "bridge": "br0"} for i in range(9)]},
     "spec.interfaces"),
    ("zero cores", {"cpu": {"cores": 0}}, "spec.cpu.cores"),
    ("negative cores", {"cpu": {"cores": -1}}, "spec.cpu.cores"),
    ("cores as string", {"cpu": {"cores": "2"}}, "spec.cpu.cores"),
    ("cores beyond the schema", {"cpu": {"cores": 1025}}, "spec.cpu.cores"),
    ("zero memory", {"memory": 0}, "spec.memory"),
    ("negative memory", {"memory": "-1Gi"}, "spec.memory"),
    ("memory as float", {"memory": 1.5}, "spec.memory"),
    ("memory garbage", {"memory": "lots"}, "spec.memory"),
    ("zero disk size", {"disks": [{"name": "d", "size": 0}]}, "spec.disks[0].size"),
    ("negative disk size", {"disks": [{"name": "d", "size": "-10Gi"}]}, "spec.disks[0].size"),
    ("unknown bus", {"disks": [{"name": "d", "size": "1Mi", "bus": "ide"}]}, "spec.disks[0].bus"),
    ("unknown run strategy", {"runStrategy": "Sometimes"}, "spec.runStrategy"),
    ("paused as string", {"paused": "true"}, "spec.paused"),
]


def _refusal(cluster: Cluster, manifest: dict[str, Any]) -> tuple[str, int | None, str]:
    """kubectl's answer, and the HTTP status and body the official client gets for the same create."""
    out = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(manifest), check=False)
    try:
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, manifest)
    except ApiException as exc:
        return out, exc.status, str(exc.body)
    return out, None, ""


def test_hostile_specs_are_refused_by_the_api_with_422_naming_the_field(cluster: Cluster) -> None:
    wrong = []
    for case, spec, field in SCHEMA_REFUSED:
        name = unique("bad")
        out, code, body = _refusal(cluster, vm_manifest(name, "node-1", **spec))
        if code != 422 or "is invalid" not in out or field not in out or field not in body:
            wrong.append(f"{case}: HTTP {code}, kubectl said {out.strip()[:300]!r}")
        if cluster.get(name) is not None:
            wrong.append(f"{case}: stored although refused")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("case", "metadata", "field"), [
    ("name with xml", {"name": "vm<x>"}, "metadata.name"),
    ("name with quote", {"name": "vm'x"}, "metadata.name"),
    ("label value with xml", {"labels": {"app": "<x>"}}, "metadata.labels"),
    ("label key with xml", {"labels": {"a<b": "x"}}, "metadata.labels"),
])
def test_metacharacters_in_names_and_labels_are_refused_by_the_api(cluster: Cluster, case: str,
                                                                   metadata: dict[str, Any], field: str) -> None:
    manifest = vm_manifest(unique("meta"), "node-1")
    manifest["metadata"].update(metadata)
    out, code, _body = _refusal(cluster, manifest)
    assert code == 422, case
    assert "is invalid" in out and field in out


@pytest.mark.parametrize("spec", [
    {"hostDevices": [{"path": "/dev/sda"}]},
    {"disks": [{"name": "d", "size": "1Mi", "source": "/dev/sda"}]},
    {"cpu": {"cores": 1, "passthrough": "host"}},
], ids=["host devices", "disk source path", "unknown cpu field"])
def test_fields_outside_the_schema_never_reach_the_node(cluster: Cluster, spec: dict[str, Any]) -> None:
    """kubectl asks for strict field validation: refused naming the field. Other clients: pruned."""
    manifest = vm_manifest(unique("extra"), "node-1", **spec)
    out = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(manifest), check=False)
    assert "unknown field" in out and "spec." in out
    assert cluster.get(manifest["metadata"]["name"]) is None
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, manifest)
    stored = cluster.get(manifest["metadata"]["name"])
    assert stored is not None
    flat = json.dumps(stored["spec"])
    assert "/dev/sda" not in flat and "passthrough" not in flat and "hostDevices" not in flat


# --- specs only the node can judge -----------------------------------------------------------------


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def _hostile_images(images: Path, outside: Path) -> None:
    """Files in the node's image directory that must never become a VM's disk."""
    _qemu_img("create", "-q", "-f", "qcow2", str(images / "base.qcow2"), "64M")
    outside.mkdir()
    _qemu_img("create", "-q", "-f", "qcow2", str(outside / "elsewhere.qcow2"), "1M")
    (images / "escape.qcow2").symlink_to("/etc/shadow")
    (images / "elsewhere.qcow2").symlink_to(outside / "elsewhere.qcow2")
    (images / "sneaky.qcow2").symlink_to("../" * 12 + "etc/passwd")
    (images / "notes.img").write_text("not a disk image\n")
    (images / "dir.qcow2").mkdir()
    os.mknod(images / "null.img", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    _qemu_img("create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", "/etc/shadow",
              str(images / "backed.qcow2"), "1M")
    _qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={outside / 'data.raw'}",
              str(images / "datafile.qcow2"), "1M")
    (images / "corrupt.qcow2").write_bytes(b"QFI\xfb" + b"\xff" * 4092)


# (case, spec fields, field the Failed message must name, text the message must contain)
NODE_JUDGED: list[tuple[str, dict[str, Any], str, str]] = [
    ("symlink out of the image dir", {"disks": [{"name": "root", "image": "escape.qcow2"}]},
     "spec.disks[0].image", "outside the image directory"),
    ("symlink to a real image outside", {"disks": [{"name": "root", "image": "elsewhere.qcow2"}]},
     "spec.disks[0].image", "outside the image directory"),
    ("relative symlink climbing out", {"disks": [{"name": "root", "image": "sneaky.qcow2"}]},
     "spec.disks[0].image", "outside the image directory"),
    ("text file as image", {"disks": [{"name": "root", "image": "notes.img"}]},
     "spec.disks[0].image", "not a disk image"),
    ("directory as image", {"disks": [{"name": "root", "image": "dir.qcow2"}]},
     "spec.disks[0].image", "not a regular file"),
    ("device node as image", {"disks": [{"name": "root", "image": "null.img"}]},
     "spec.disks[0].image", "not a regular file"),
    ("image with a backing file", {"disks": [{"name": "root", "image": "backed.qcow2"}]},
     "spec.disks[0].image", "backing file"),
    ("image with an external data file", {"disks": [{"name": "root", "image": "datafile.qcow2"}]},
     "spec.disks[0].image", "data file"),
    ("corrupt qcow2 (qemu-img refuses it)", {"disks": [{"name": "root", "image": "corrupt.qcow2"}]},
     "spec.disks[0].image", "qemu-img"),
    ("second disk bad, first fine", {"disks": [{"name": "a", "size": "8Mi"}, {"name": "b", "image": "notes.img"}]},
     "spec.disks[1].image", "not a disk image"),
    ("disk smaller than its image", {"disks": [{"name": "root", "image": "base.qcow2", "size": "32Mi"}]},
     "spec.disks[0].size", "only grow"),
    ("memory beyond the node maximum", {"memory": "2Gi"}, "spec.memory", "1024Mi"),
    ("cores beyond the node maximum", {"cpu": {"cores": 3}}, "spec.cpu.cores", "2"),
    ("memory below the minimum", {"memory": "15Mi"}, "spec.memory", "16Mi"),
    ("disk below the minimum", {"disks": [{"name": "d", "size": "1Ki"}]}, "spec.disks[0].size", "1Mi"),
    ("more disks than the node allows", {"disks": [{"name": f"d{i}", "size": "1Mi"} for i in range(3)]},
     "spec.disks", "2"),
    ("more interfaces than the node allows", {"interfaces": [{"name": f"n{i}", "bridge": "br0"} for i in range(3)]},
     "spec.interfaces", "2"),
    ("duplicate MAC addresses", {"interfaces": [{**NIC, "macAddress": "52:54:00:ab:cd:01"},
                                                {"name": "nic1", "bridge": "br0", "macAddress": "52:54:00:AB:CD:01"}]},
     "spec.interfaces[1].macAddress", "52"),
    ("unknown network", {"interfaces": [{"name": "nic0", "network": "no-such-net"}]},
     "spec.interfaces[0].network", "does not exist"),
    ("unknown bridge", {"interfaces": [{"name": "nic0", "bridge": "nobr0"}]},
     "spec.interfaces[0].bridge", "does not exist"),
    ("a device that is not a bridge", {"interfaces": [{"name": "nic0", "bridge": "lo"}]},
     "spec.interfaces[0].bridge", "is not a bridge"),
]


def _bystander(cluster: Cluster, host: Host, node: str) -> tuple[str, str, int, str]:
    name = unique("bystander")
    cluster.apply(vm_manifest(name, node, disks=[{"name": "root", "image": "base.qcow2"}]))
    uid = cluster.wait_phase(name, "Running")["domainUUID"]
    dom = host.domain(uid)
    assert dom is not None
    return name, uid, host.qemu_pid(f"default_{name}"), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def _assert_bystander_untouched(cluster: Cluster, host: Host, bystander: tuple[str, str, int, str]) -> None:
    name, uid, pid, xml = bystander
    assert cluster.status(name)["phase"] == "Running"
    assert host.state(uid) == libvirt.VIR_DOMAIN_RUNNING
    assert host.qemu_pid(f"default_{name}") == pid, "the bystander's guest was restarted"
    assert host.domain(uid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == xml  # type: ignore[union-attr]


def _assert_no_reconcile_errors(operator: OperatorProcess, names: list[str]) -> None:
    """Refusals are decisions, not exceptions: no reconciliation of these VMs failed with a traceback."""
    log = operator.log.read_text(errors="replace")
    crashed = [n for n in names if f"'{n}') failed" in log]
    assert not crashed, f"reconciliation raised for {crashed}"
    assert operator.proc is not None and operator.proc.poll() is None, "the operator exited"


def test_specs_only_the_node_can_judge_end_failed_naming_the_field_and_leave_nothing(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str, dirs: tuple[Path, Path]) -> None:
    storage, images = dirs
    _hostile_images(images, images.parent / "outside")
    operator = make_operator(node_name, "--max-memory-mib", "1024", "--max-vcpus", "2", "--max-disks", "2",
                             "--max-interfaces", "2")
    bystander = _bystander(cluster, host, node_name)

    names = {}
    for case, spec, field, text in NODE_JUDGED:
        name = unique("hostile")
        names[name] = (case, field, text)
        cluster.apply(vm_manifest(name, node_name, **spec))

    wrong = []
    for name, (case, field, text) in names.items():
        status = cluster.wait_phase(name, "Failed")
        vm = cluster.get(name)
        assert vm is not None
        uid = vm["metadata"]["uid"]
        message = status.get("message", "")
        if field not in message or text not in message:
            wrong.append(f"{case}: message {message!r} should name {field} and say {text!r}")
        if status.get("reason") not in ("InvalidSpec", "ProvisioningFailed"):
            wrong.append(f"{case}: reason {status.get('reason')}")
        if host.domain(uid) is not None:
            wrong.append(f"{case}: a domain was defined")
        if (storage / uid).exists():
            wrong.append(f"{case}: disk directory {storage / uid} left behind")
    assert not wrong, "\n".join(wrong)
    poll(lambda: all({"InvalidSpec", "ProvisioningFailed"} & set(cluster.event_reasons(n)) for n in names),
         what="a Warning Event for every refused VM")
    _assert_bystander_untouched(cluster, host, bystander)
    _assert_no_reconcile_errors(operator, list(names))
    assert sorted(p.name for p in storage.iterdir() if not p.name.startswith(".")) == [bystander[1]]

    # Failed is not final: fixing the spec brings the VM up, with nothing left from the refused attempt.
    fixed = next(n for n, (case, _f, _t) in names.items() if case == "second disk bad, first fine")
    cluster.patch_spec(fixed, {"disks": [{"name": "a", "size": "8Mi"}, {"name": "b", "image": "base.qcow2"}]})
    uid = cluster.wait_phase(fixed, "Running")["domainUUID"]
    # the two disks and the serial console's log (every guest has one, kept in its VM's directory)
    assert sorted(p.name for p in (storage / uid).iterdir()) == ["a.qcow2", "b.qcow2", "console.log"]


def _settled(cluster: Cluster, name: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        status = cluster.status(name)
        return status if status.get("phase") in ("Failed", "Running") else None
    return check


@pytest.mark.parametrize("resource", ["memory", "cores"])
def test_a_vm_larger_than_the_host_ends_failed_naming_the_field(cluster: Cluster, host: Host, make_operator: Any,
                                                                node_name: str, resource: str) -> None:
    """Within the configured maxima (256Gi, 64 vCPUs by default) but more than this host has."""
    _model, host_mib, host_cpus, *_ = host.conn.getInfo()
    if resource == "memory":
        wanted_gib = host_mib * 2 // 1024 + 1
        if wanted_gib * 1024 > 262144:
            pytest.skip("this host has as much memory as the default maximum")
        spec: dict[str, Any] = {"memory": f"{wanted_gib}Gi"}
        field = "spec.memory"
    else:
        if host_cpus * 2 > 64:
            pytest.skip("this host has as many CPUs as the default maximum")
        spec = {"cpu": {"cores": host_cpus * 2}}
        field = "spec.cpu.cores"
    operator = make_operator(node_name)
    name = unique("huge")
    cluster.apply(vm_manifest(name, node_name, **spec))
    try:
        status = poll(_settled(cluster, name), timeout=60, what=f"{name} to settle")
        assert status is not None
        assert status["phase"] == "Failed", f"should end Failed naming {field}, got {status}"
        assert field in status["message"]
        assert host.owned_domains(node_name) == []
    finally:
        operator.stop()  # the guest, if it got one, is not left running with more than the host has
        for uid, _name in host.owned_domains(node_name):
            host.remove(uid)


def test_a_hostile_change_to_a_running_vm_is_refused_naming_the_field_and_the_guest_keeps_running(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str, dirs: tuple[Path, Path]) -> None:
    storage, images = dirs
    _qemu_img("create", "-q", "-f", "qcow2", str(images / "base.qcow2"), "16M")
    (images / "escape.qcow2").symlink_to("/etc/shadow")
    make_operator(node_name)
    name = unique("change")
    cluster.apply(vm_manifest(name, node_name, disks=[{"name": "root", "image": "base.qcow2"}]))
    uid = cluster.wait_phase(name, "Running")["domainUUID"]
    pid = host.qemu_pid(f"default_{name}")
    before = host.domain(uid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)  # type: ignore[union-attr]

    cluster.patch_spec(name, {"disks": [{"name": "root", "image": "base.qcow2"},
                                        {"name": "data", "image": "escape.qcow2"}]})
    vm = cluster.get(name)
    assert vm is not None
    generation = vm["metadata"]["generation"]
    poll(lambda: cluster.status(name).get("observedGeneration") == generation, what="the change to be seen")
    status = cluster.status(name)
    assert status["phase"] == "Failed" and "spec.disks[1].image" in status["message"], status
    assert host.domain(uid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before  # type: ignore[union-attr]
    assert host.qemu_pid(f"default_{name}") == pid
    assert not (storage / uid / "data.qcow2").exists()


def _shape(xml: str) -> set[str]:
    """Every element path and attribute name of a domain XML, without values."""
    found: set[str] = set()

    def walk(elem: ET.Element, path: str) -> None:
        here = f"{path}/{elem.tag}"
        found.add(here)
        found.update(f"{here}@{attr}" for attr in elem.attrib)
        for child in elem:
            walk(child, here)
    walk(ET.fromstring(xml), "")
    return found


def test_metacharacters_in_annotations_and_allowed_names_stay_out_of_the_domain_xml(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str) -> None:
    make_operator(node_name)
    plain = unique("plain")
    cluster.apply(vm_manifest(plain, node_name))
    hostile = f"x.{unique('meta')}"  # a dotted DNS subdomain: the most a name may carry
    manifest = vm_manifest(hostile, node_name)
    manifest["metadata"]["labels"] = {"app.kubernetes.io/name": "a.b_c-d", "x": ""}
    manifest["metadata"]["annotations"] = {
        "inject": "</name><devices><disk type='file'><source file='/etc/shadow'/></disk></devices>",
        "entity": "]]><!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>&x;",
        "quotes": "\"'<>&\u202e\n\t",
    }
    cluster.apply(manifest)
    plain_uid = cluster.wait_phase(plain, "Running")["domainUUID"]
    hostile_uid = cluster.wait_phase(hostile, "Running")["domainUUID"]
    plain_xml = host.domain(plain_uid).XMLDesc(0)  # type: ignore[union-attr]
    hostile_xml = host.domain(hostile_uid).XMLDesc(0)  # type: ignore[union-attr]
    assert _shape(hostile_xml) == _shape(plain_xml)
    for needle in ("/etc/shadow", "/etc/passwd", "ENTITY", "inject"):
        assert needle not in hostile_xml
    assert ET.fromstring(hostile_xml).findtext("name") == f"default_{hostile}"
