"""The VM lifecycle on real libvirt + QEMU, driven with kubectl through the API emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt

from libvirt_operator.api.constants import FINALIZER
from libvirt_operator.hypervisor.domain_xml import parse_owner
from tests.e2e.harness import Cluster, Host, poll, unique, vm_manifest


def test_an_applied_vm_gets_a_running_guest_and_its_status_says_so(cluster: Cluster, host: Host,
                                                                    make_operator: Any, node_name: str) -> None:
    make_operator(node_name)
    name = unique("run")
    cluster.apply(vm_manifest(name, node_name))
    status = cluster.wait_phase(name, "Running", powerState="Running")
    vm = cluster.get(name)
    assert vm is not None
    uid = vm["metadata"]["uid"]
    assert status["domainUUID"] == uid
    assert status["domainName"] == f"default_{name}"
    assert status["nodeName"] == node_name
    assert status["observedGeneration"] == vm["metadata"]["generation"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["lastTransitionTime"]
    assert FINALIZER in vm["metadata"]["finalizers"]
    # libvirt agrees, and the domain's metadata proves who owns it.
    assert host.state(uid) == libvirt.VIR_DOMAIN_RUNNING
    dom = host.domain(uid)
    assert dom is not None
    owner = parse_owner(dom.XMLDesc(0))
    assert owner is not None and (owner.namespace, owner.name, owner.uid, owner.node) == (
        "default", name, uid, node_name)
    # kubectl shows the printer columns.
    table = cluster.kubectl("get", "lvm", name)
    assert "PHASE" in table and "Running" in table and node_name in table


def test_stop_start_pause_resume_by_patching_the_spec(cluster: Cluster, host: Host, make_operator: Any,
                                                      node_name: str) -> None:
    make_operator(node_name)
    name = unique("power")
    cluster.apply(vm_manifest(name, node_name))
    uid = cluster.wait_phase(name, "Running")["domainUUID"]

    cluster.patch_spec(name, {"runStrategy": "Halted"})
    status = cluster.wait_phase(name, "Stopped", powerState="Shutoff", timeout=60)
    assert host.state(uid) == libvirt.VIR_DOMAIN_SHUTOFF
    # No OS answers the ACPI power-off: destroyed at the shutdown timeout, and the status says so.
    assert (status["lastEvent"]["detail"], status["reason"]) == ("Destroyed", "Destroyed")

    cluster.patch_spec(name, {"runStrategy": "Always"})
    cluster.wait_phase(name, "Running", powerState="Running")
    assert host.state(uid) == libvirt.VIR_DOMAIN_RUNNING

    cluster.patch_spec(name, {"paused": True})
    cluster.wait_phase(name, "Paused", powerState="Paused")
    assert host.state(uid) == libvirt.VIR_DOMAIN_PAUSED

    cluster.patch_spec(name, {"paused": False})
    cluster.wait_phase(name, "Running", powerState="Running")
    assert host.state(uid) == libvirt.VIR_DOMAIN_RUNNING


def test_delete_removes_the_domain_and_the_disks_it_created(cluster: Cluster, host: Host, make_operator: Any,
                                                            node_name: str, dirs: tuple[Path, Path]) -> None:
    storage, _images = dirs
    make_operator(node_name)
    name = unique("del")
    cluster.apply(vm_manifest(name, node_name, disks=[{"name": "data", "size": "16Mi"}]))
    uid = cluster.wait_phase(name, "Running")["domainUUID"]
    disk_files = list((storage / uid).glob("*.qcow2"))
    assert [p.name for p in disk_files] == ["data.qcow2"]

    cluster.kubectl("delete", "lvm", name, "--wait=false")
    poll(lambda: cluster.get(name) is None, timeout=60, what="the VirtualMachine to be gone")
    assert host.domain(uid) is None
    assert not (storage / uid).exists()


def test_a_halted_vm_is_defined_but_not_started(cluster: Cluster, host: Host, make_operator: Any,
                                                node_name: str) -> None:
    make_operator(node_name)
    name = unique("halted")
    cluster.apply(vm_manifest(name, node_name, run_strategy="Halted"))
    uid = cluster.wait_phase(name, "Stopped", powerState="Shutoff")["domainUUID"]
    assert host.state(uid) == libvirt.VIR_DOMAIN_SHUTOFF


def test_a_spec_only_the_node_can_judge_ends_failed_naming_the_field(cluster: Cluster, host: Host,
                                                                     make_operator: Any, node_name: str) -> None:
    make_operator(node_name)
    name = unique("noimg")
    cluster.apply(vm_manifest(name, node_name, disks=[{"name": "root", "image": "missing.qcow2"}]))
    status = cluster.wait_phase(name, "Failed")
    assert "spec.disks[0].image" in status["message"]
    vm = cluster.get(name)
    assert vm is not None and host.domain(vm["metadata"]["uid"]) is None
    assert "ProvisioningFailed" in cluster.event_reasons(name)


def test_two_operators_for_two_nodes_never_touch_each_others_vms(cluster: Cluster, host: Host,
                                                                 make_operator: Any, node_name: str) -> None:
    node_a, node_b = f"{node_name}-a", f"{node_name}-b"
    make_operator(node_a)
    make_operator(node_b)
    vm_a, vm_b = unique("a"), unique("b")
    cluster.apply(vm_manifest(vm_a, node_a))
    cluster.apply(vm_manifest(vm_b, node_b))
    status_a = cluster.wait_phase(vm_a, "Running")
    status_b = cluster.wait_phase(vm_b, "Running")
    assert (status_a["nodeName"], status_b["nodeName"]) == (node_a, node_b)
    for status, node in ((status_a, node_a), (status_b, node_b)):
        dom = host.domain(status["domainUUID"])
        assert dom is not None
        owner = parse_owner(dom.XMLDesc(0))
        assert owner is not None and owner.node == node
    # A VM for a node nobody runs stays untouched: no status, no finalizer, no domain.
    orphan = unique("nobody")
    cluster.apply(vm_manifest(orphan, f"{node_name}-c"))
    cluster.patch_spec(vm_a, {"paused": True})
    cluster.wait_phase(vm_a, "Paused")
    vm = cluster.get(orphan)
    assert vm is not None and not vm.get("status") and not vm["metadata"].get("finalizers")
    assert host.domain(vm["metadata"]["uid"]) is None


def test_a_hardware_change_redefines_the_domain_and_asks_for_a_restart(cluster: Cluster, host: Host,
                                                                       make_operator: Any, node_name: str) -> None:
    operator = make_operator(node_name)
    name = unique("hw")
    cluster.apply(vm_manifest(name, node_name, memory="32Mi"))
    uid = cluster.wait_phase(name, "Running")["domainUUID"]

    def restart_required() -> str | None:
        for cond in cluster.status(name).get("conditions") or []:
            if cond["type"] == "RestartRequired":
                return str(cond["status"])
        return None

    cluster.patch_spec(name, {"memory": "48Mi"})
    poll(lambda: restart_required() == "True", what="RestartRequired=True")
    dom = host.domain(uid)
    assert dom is not None
    assert "<memory unit='KiB'>49152</memory>" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert dom.maxMemory() == 32768  # the running guest keeps its hardware until restarted

    # A new operator process reads the pending change from libvirt (live vs persistent definition).
    operator.stop()
    operator.start()  # ready: its first pass over the VM is done
    assert restart_required() == "True"
    assert cluster.status(name)["phase"] == "Running"

    cluster.patch_spec(name, {"runStrategy": "Halted"})
    cluster.wait_phase(name, "Stopped")
    cluster.patch_spec(name, {"runStrategy": "Always"})
    cluster.wait_phase(name, "Running")
    poll(lambda: restart_required() is None, what="RestartRequired to be cleared by the restart")
    assert host.domain(uid).maxMemory() == 49152  # type: ignore[union-attr]
