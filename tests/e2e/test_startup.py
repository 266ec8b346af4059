"""Start-up reconciliation: stop the operator, change libvirt and the API as the real event would, start it
again, check the outcome (nova's init_host / _init_instance / _destroy_evacuated_instances)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import libvirt

from libvirt_operator.api.constants import FINALIZER, GROUP, PLURAL, RETRY_ANNOTATION, VERSION
from tests.e2e.harness import Cluster, Host, poll, unique, vm_manifest


def test_after_a_restart_every_case_converges_and_unowned_domains_are_untouched(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str, dirs: tuple[Path, Path]) -> None:
    storage = dirs[0]
    operator = make_operator(node_name)
    other_node = f"{node_name}-other"
    # Five VMs, each set up for one case.
    destroyed, manual, moved, gone, stopping = (unique(p) for p in ("destroyed", "manual", "moved", "gone", "stop"))
    cluster.apply(vm_manifest(destroyed, node_name))
    cluster.apply(vm_manifest(manual, node_name, run_strategy="Manual"))
    cluster.apply(vm_manifest(moved, node_name, disks=[{"name": "data", "size": "8Mi"}]))
    cluster.apply(vm_manifest(gone, node_name, disks=[{"name": "data", "size": "8Mi"}]))
    cluster.apply(vm_manifest(stopping, node_name))
    uids = {n: cluster.wait_phase(n, "Running")["domainUUID"] for n in (destroyed, manual, moved, gone, stopping)}
    unmanaged = unique("admin-guest")
    unmanaged_uuid = host.define_unmanaged(unmanaged)
    host.domain(unmanaged_uuid).create()  # type: ignore[union-attr]

    operator.stop()
    # What happened while it was down:
    host.virsh("destroy", f"default_{destroyed}")  # host reboot: the guest is shut off
    host.virsh("destroy", f"default_{manual}")
    cluster.patch_spec(moved, {"nodeName": other_node})  # rescheduled elsewhere
    cluster.kubectl("patch", "lvm", gone, "--type", "json",  # removed from the API behind our back
                    "-p", json.dumps([{"op": "remove", "path": "/metadata/finalizers"}]))
    cluster.kubectl("delete", "lvm", gone)
    cluster.patch_spec(stopping, {"runStrategy": "Halted"})  # a stop the operator never saw
    cluster.patch_status(stopping, {"phase": "Stopping"})

    operator.start()
    # Always: shut off at start-up, started again.
    cluster.wait_phase(destroyed, "Running")
    assert host.state(uids[destroyed]) == libvirt.VIR_DOMAIN_RUNNING
    # Manual but it was Running: resumed on host boot.
    cluster.wait_phase(manual, "Running")
    assert "ResumedOnHostBoot" in cluster.event_reasons(manual)
    # Moved to another node: domain removed here, disks removed (storage not shared).
    assert host.domain(uids[moved]) is None
    assert not (storage / uids[moved]).exists()
    # Gone from the API: domain removed, disks kept (default), reported on the Node.
    assert host.domain(uids[gone]) is None
    assert (storage / uids[gone] / "data.qcow2").exists()
    events = json.loads(cluster.kubectl("get", "events", "-A", "-o", "json"))["items"]
    assert any(e["reason"] == "OrphanDomainRemoved" and e["involvedObject"]["kind"] == "Node" for e in events)
    # The interrupted stop is retried.
    cluster.wait_phase(stopping, "Stopped")
    assert host.state(uids[stopping]) == libvirt.VIR_DOMAIN_SHUTOFF
    # Not ours: never touched.
    assert host.state(unmanaged_uuid) == libvirt.VIR_DOMAIN_RUNNING
    assert "not ours" in operator.tail(400)
    host.remove(unmanaged_uuid)


def test_interrupted_provisioning_fails_cleanly_and_a_retry_annotation_recovers_it(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str, dirs: tuple[Path, Path]) -> None:
    operator = make_operator(node_name)
    operator.stop()
    name = unique("prov")
    cluster.apply(vm_manifest(name, node_name))
    vm = cluster.get(name)
    assert vm is not None
    uid = vm["metadata"]["uid"]
    # As left by an operator that died mid-spawn: the status says Provisioning, a half-made disk dir exists.
    cluster.kubectl("patch", "lvm", name, "--type", "merge", "-p",
                    json.dumps({"metadata": {"finalizers": [FINALIZER]}}))
    cluster.patch_status(name, {"phase": "Provisioning", "domainName": f"default_{name}"})
    half = dirs[0] / uid
    half.mkdir()
    (half / "data.qcow2.partial").write_bytes(b"half")

    operator.start()
    status = cluster.wait_phase(name, "Failed")
    assert "provisioning was interrupted" in status["message"]
    assert not half.exists()
    assert host.domain(uid) is None  # interrupted provisioning wins over "domain missing"
    assert "ProvisioningInterrupted" in cluster.event_reasons(name)

    assert "domainName" not in status  # removed with the half-made domain
    cluster.kubectl("annotate", "lvm", name, f"{RETRY_ANNOTATION}=1")
    cluster.wait_phase(name, "Running")
    assert host.state(uid) == libvirt.VIR_DOMAIN_RUNNING
    assert "DomainRedefined" not in cluster.event_reasons(name)  # a domain that never was is not "missing"


def test_a_missing_domain_is_defined_again_and_an_unfinished_deletion_is_completed(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str) -> None:
    operator = make_operator(node_name)
    missing, deleting = unique("missing"), unique("deleting")
    cluster.apply(vm_manifest(missing, node_name))
    cluster.apply(vm_manifest(deleting, node_name))
    uid_missing = cluster.wait_phase(missing, "Running")["domainUUID"]
    uid_deleting = cluster.wait_phase(deleting, "Running")["domainUUID"]
    operator.stop()
    host.remove(uid_missing)  # gone from libvirt entirely
    cluster.kubectl("delete", "lvm", deleting, "--wait=false")  # finalizer holds it

    operator.start()
    cluster.wait_phase(missing, "Running")
    assert host.state(uid_missing) == libvirt.VIR_DOMAIN_RUNNING
    assert "DomainRedefined" in cluster.event_reasons(missing)
    poll(lambda: cluster.get(deleting) is None, timeout=60, what="the deletion to complete")
    assert host.domain(uid_deleting) is None


def test_readiness_waits_for_start_up_reconciliation(cluster: Cluster, host: Host, make_operator: Any,
                                                     node_name: str) -> None:
    operator = make_operator(node_name, start=False)
    operator.start(wait_ready=False)
    codes = set()

    def ready() -> bool:
        code = operator.readyz() if operator.proc.poll() is None else 0
        codes.add(code)
        return code == 200
    poll(ready, timeout=60, what="readiness")
    assert "start-up reconciliation done" in operator.tail(400)


def test_sigkill_during_provisioning_and_deletion_leaks_nothing(cluster: Cluster, host: Host, make_operator: Any,
                                                                node_name: str, dirs: tuple[Path, Path]) -> None:
    storage = dirs[0]
    operator = make_operator(node_name)
    names = [unique("kill") for _ in range(3)]
    for name in names:
        cluster.apply(vm_manifest(name, node_name, disks=[{"name": "data", "size": "8Mi"}]))
    # Killed while provisioning: as soon as the first status says Provisioning.
    poll(lambda: any(cluster.status(n).get("phase") == "Provisioning" for n in names), timeout=30,
         interval=0.01, what="provisioning to begin")
    operator.kill()
    operator.start()
    for name in names:
        status = poll(lambda n=name: cluster.status(n).get("phase") in ("Running", "Failed") and cluster.status(n),
                      timeout=60, what=f"{name} to converge")
        if status["phase"] == "Failed":
            cluster.kubectl("annotate", "lvm", name, f"{RETRY_ANNOTATION}=again", "--overwrite")
            cluster.wait_phase(name, "Running")
    uids = [cluster.status(n)["domainUUID"] for n in names]
    # Killed while deleting.
    for name in names:
        cluster.kubectl("delete", "lvm", name, "--wait=false")
    poll(lambda: any(cluster.status(n).get("phase") == "Terminating" for n in names), timeout=30, interval=0.01,
         what="deletion to begin")
    operator.kill()
    operator.start()
    for name in names:
        poll(lambda n=name: cluster.get(n) is None, timeout=90, what=f"{name} deleted (no stuck finalizer)")
    for uid in uids:
        assert host.domain(uid) is None, f"leaked domain {uid}"
        assert not (storage / uid).exists(), f"leaked disks of {uid}"
    leftovers = cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    assert [vm["metadata"]["name"] for vm in leftovers if vm["metadata"]["name"] in names] == []
