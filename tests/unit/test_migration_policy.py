"""Live migration's pure decisions: the phase table, who does what next, refusals, storage mode, libvirt's
migration events and job statistics, the lock and hand-over patches, and the target's definition."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kube_emulator.errors import ApiError
from kube_emulator.patches import json_patch
from libvirt_operator.api.constants import MIGRATING_ANNOTATION, MIGRATION_URI_ANNOTATION, XML_NAMESPACE
from libvirt_operator.api.migration import (
    FINAL,
    TRANSITIONS,
    MigrationPhase,
    MigrationSpec,
    MigrationSpecError,
    StorageMode,
    may_move,
    parse_migration_spec,
    phase_of,
)
from libvirt_operator.api.spec import parse_spec
from libvirt_operator.api.status import EVENT_DETAILS, PowerState
from libvirt_operator.drain import drain_plan, migration_body
from libvirt_operator.hypervisor.domain_xml import Owner, build_domain_xml, owned_disk_paths, parse_owner
from libvirt_operator.hypervisor.migration import (
    BASE_FLAGS,
    MigrationXMLError,
    create_target_disks,
    migration_flags,
    owned_disks,
    retarget_xml,
)
from libvirt_operator.hypervisor.storage import Storage, StorageError
from libvirt_operator.pipeline.migration_policy import (
    Role,
    SourceStep,
    TargetStep,
    handover_ops,
    is_migration_event,
    is_no_space,
    job_failure,
    job_fields,
    lock_ops,
    prepare_failure,
    refusal,
    role,
    source_step,
    storage_mode,
    target_problem,
    target_step,
    unlock_ops,
)
from libvirt_operator.pipeline.policy import Action, Observed, decide

NS = f"{{{XML_NAMESPACE}}}"


def migration(phase: str | None = None, target: str = "node-b", **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "m1", "namespace": "default"},
                            "spec": {"vmName": "vm1", "targetNode": target}}
    if phase is not None:
        status["phase"] = phase
    if status:
        body["status"] = status
    return body


def vm(phase: str = "Running", annotations: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "vm1", "namespace": "default", "uid": "u1", "resourceVersion": "7",
                         **({"annotations": annotations} if annotations is not None else {}), **meta},
            "spec": {"nodeName": "node-a"}, "status": {"phase": phase}}


# --- the phase table -------------------------------------------------------------------------------------

def test_phases_move_forward_only_and_the_ends_are_final() -> None:
    assert FINAL == {MigrationPhase.SUCCEEDED, MigrationPhase.FAILED}
    assert may_move(MigrationPhase.PENDING, MigrationPhase.RUNNING)
    assert may_move(MigrationPhase.PENDING, MigrationPhase.FAILED)
    assert may_move(MigrationPhase.RUNNING, MigrationPhase.SUCCEEDED)
    assert not may_move(MigrationPhase.PENDING, MigrationPhase.SUCCEEDED)  # never without a job
    assert not may_move(MigrationPhase.RUNNING, MigrationPhase.PENDING)
    for final in FINAL:
        assert TRANSITIONS[final] == frozenset()
        assert all(not may_move(final, other) for other in MigrationPhase if other != final)
    assert all(may_move(phase, phase) for phase in MigrationPhase)


def test_a_migration_without_status_or_with_an_unknown_phase_is_pending() -> None:
    assert phase_of(migration()) == MigrationPhase.PENDING
    assert phase_of(migration("Bogus")) == MigrationPhase.PENDING
    assert phase_of(migration("Running")) == MigrationPhase.RUNNING


def test_the_spec_is_rechecked_naming_the_field() -> None:
    assert parse_migration_spec({"vmName": "vm1", "targetNode": "node-b"}) == MigrationSpec("vm1", "node-b")
    with pytest.raises(MigrationSpecError, match=r"^spec.vmName: is required"):
        parse_migration_spec({"targetNode": "node-b"})
    with pytest.raises(MigrationSpecError, match=r"^spec.targetNode: 'Node_B' is not a DNS-1123 subdomain"):
        parse_migration_spec({"vmName": "vm1", "targetNode": "Node_B"})
    with pytest.raises(MigrationSpecError, match=r"^spec: is required"):
        parse_migration_spec(None)


# --- who does what next ------------------------------------------------------------------------------------

def test_the_vms_node_is_the_source_until_it_recorded_itself_and_the_target_node_is_the_target() -> None:
    assert role(migration(), "node-a", "node-a") == Role.SOURCE
    assert role(migration(), "node-b", "node-a") == Role.TARGET
    assert role(migration(), "node-c", "node-a") == Role.NONE
    # After the hand-over the VM is the target's: the recorded source still finishes (and cleans) it.
    handed = migration("Running", sourceNode="node-a")
    assert role(handed, "node-a", None) == Role.SOURCE
    assert role(handed, "node-b", "node-b") == Role.TARGET
    # A VM already on the target node is not migrated by the target itself.
    assert role(migration(), "node-b", "node-b") == Role.TARGET


@pytest.mark.parametrize(("body", "job_here", "step"), [
    (migration(), False, SourceStep.ADMIT),
    (migration("Pending", sourceNode="node-a"), False, SourceStep.WAIT_TARGET),
    (migration("Pending", sourceNode="node-a", targetReady=True), False, SourceStep.START),
    (migration("Pending", sourceNode="node-a", targetReady=True), True, SourceStep.WATCH),
    (migration("Running", sourceNode="node-a", targetReady=True), True, SourceStep.WATCH),
    (migration("Running", sourceNode="node-a", targetReady=True), False, SourceStep.RECOVER),
    (migration("Succeeded", sourceNode="node-a"), False, SourceStep.DONE),
    (migration("Failed"), False, SourceStep.DONE),
])
def test_source_steps(body: dict[str, Any], job_here: bool, step: SourceStep) -> None:
    assert source_step(body, job_here=job_here) == step


@pytest.mark.parametrize(("body", "prepared", "step"), [
    (migration(), False, TargetStep.CHECK),
    (migration("Pending", sourceNode="node-a"), False, TargetStep.PREPARE),
    (migration("Pending", sourceNode="node-a"), True, TargetStep.NOTHING),
    (migration("Pending", sourceNode="node-a", targetReady=True), False, TargetStep.NOTHING),
    (migration("Running", sourceNode="node-a", targetReady=True), False, TargetStep.NOTHING),
    (migration("Failed", targetDisks=[{"name": "d", "path": "/x/d.qcow2"}]), False, TargetStep.CLEAN),
    (migration("Failed"), False, TargetStep.NOTHING),
    (migration("Succeeded", targetDisks=[{"name": "d", "path": "/x/d.qcow2"}]), False, TargetStep.NOTHING),
])
def test_target_steps(body: dict[str, Any], prepared: bool, step: TargetStep) -> None:
    assert target_step(body, prepared_here=prepared) == step


# --- refusals ------------------------------------------------------------------------------------------------

def test_a_running_or_paused_vm_of_this_node_may_migrate() -> None:
    assert refusal(migration_name="m1", vm=vm("Running"), node="node-a", target="node-b") is None
    assert refusal(migration_name="m1", vm=vm("Paused"), node="node-a", target="node-b") is None
    # Its own lock (a retry of the same migration) is no refusal.
    assert refusal(migration_name="m1", vm=vm(annotations={MIGRATING_ANNOTATION: "m1"}), node="node-a",
                   target="node-b") is None


@pytest.mark.parametrize(("the_vm", "target", "words"), [
    (None, "node-b", "does not exist"),
    (vm(), "node-a", "already runs on node node-a"),
    (vm("Stopped"), "node-b", "only a running or paused VirtualMachine"),
    (vm("Provisioning"), "node-b", "(it is Provisioning)"),
    (vm(annotations={MIGRATING_ANNOTATION: "m0"}), "node-b", "already being migrated (migration m0): one"),
    (vm(annotations={MIGRATING_ANNOTATION: ""}), "node-b", f"(the annotation {MIGRATING_ANNOTATION})"),
    (vm(deletionTimestamp="2026-12-01T00:00:00Z"), "node-b", "being deleted"),
])
def test_refusals_say_why(the_vm: dict[str, Any] | None, target: str, words: str) -> None:
    message = refusal(migration_name="m1", vm=the_vm, node="node-a", target=target)
    assert message is not None and words in message


def node(uri: str | None = "qemu+tcp://10.99.0.2/system", ready: str | None = "True") -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "node-b",
                                         "annotations": {MIGRATION_URI_ANNOTATION: uri} if uri else {}}}
    if ready is not None:
        body["status"] = {"conditions": [{"type": "LibvirtReady", "status": ready, "reason": "LibvirtUnreachable",
                                          "message": "libvirt at qemu:///system: connection refused"}]}
    return body


def test_the_target_must_exist_publish_a_migration_uri_and_have_libvirt_ready() -> None:
    assert target_problem(node(), "node-b") is None
    assert "does not exist" in str(target_problem(None, "node-b"))
    assert "publishes no migration URI" in str(target_problem(node(uri=None), "node-b"))
    assert "libvirt is not ready (libvirt at qemu:///system: connection refused)" in str(
        target_problem(node(ready="False"), "node-b"))
    assert "its operator is not running" in str(target_problem(node(ready=None), "node-b"))


# --- storage, events, job statistics -------------------------------------------------------------------------

def test_storage_mode() -> None:
    assert storage_mode(shared=True, disk_count=2) == StorageMode.SHARED
    assert storage_mode(shared=False, disk_count=1) == StorageMode.BLOCK
    assert storage_mode(shared=False, disk_count=0) == StorageMode.NONE
    assert storage_mode(shared=True, disk_count=0) == StorageMode.NONE


def test_flags_are_peer_to_peer_live_persistent_and_undefine_the_source() -> None:
    for flag in (libvirt.VIR_MIGRATE_LIVE, libvirt.VIR_MIGRATE_PEER2PEER, libvirt.VIR_MIGRATE_PERSIST_DEST,
                 libvirt.VIR_MIGRATE_UNDEFINE_SOURCE):
        assert BASE_FLAGS & flag
    assert migration_flags(StorageMode.BLOCK) & libvirt.VIR_MIGRATE_NON_SHARED_DISK
    assert not migration_flags(StorageMode.SHARED) & libvirt.VIR_MIGRATE_NON_SHARED_DISK
    assert not migration_flags(StorageMode.NONE) & (libvirt.VIR_MIGRATE_NON_SHARED_DISK | libvirt.VIR_MIGRATE_UNSAFE)


def test_the_lifecycle_events_of_a_migration_are_told_apart_from_crashes_and_stops() -> None:
    for etype, detail in (("Suspended", "Migrated"), ("Stopped", "Migrated"), ("Started", "Migrated"),
                          ("Resumed", "Migrated")):
        assert detail in EVENT_DETAILS[etype]  # the names libvirt's numbers translate to
        assert is_migration_event(etype, detail)
    for etype, detail in (("Stopped", "Crashed"), ("Stopped", "Failed"), ("Stopped", "Destroyed"),
                          ("Started", "Booted"), ("Suspended", "Paused"), ("Resumed", "Unpaused"),
                          ("Defined", "Added")):
        assert not is_migration_event(etype, detail)


def test_a_guest_shut_off_because_it_migrated_away_is_never_restarted_by_policy() -> None:
    for strategy in ("Always", "RerunOnFailure", "Manual", "Halted"):
        decision = decide(run_strategy=strategy, paused=False, observed=Observed(PowerState.SHUTOFF, "Migrated"),
                          first_start=False, spec_changed=False, believed_running=True)
        assert decision.action == Action.NONE, strategy
        assert not decision.restart_by_policy


def test_job_fields_take_what_libvirt_reports_and_nothing_else() -> None:
    stats = {"type": 3, "time_elapsed": 812, "data_total": 40 << 20, "data_processed": 41 << 20,
             "data_remaining": 0, "memory_processed": 33 << 20, "disk_processed": 8 << 20, "downtime": 17,
             "memory_bps": 10, "setup_time": True}
    assert job_fields(stats, completed=True) == {
        "timeElapsedMs": 812, "dataTotal": 40 << 20, "dataProcessed": 41 << 20, "dataRemaining": 0,
        "memoryProcessed": 33 << 20, "diskProcessed": 8 << 20, "downtimeMs": 17}
    # A running job's downtime is libvirt's expectation (the allowed maximum), not a measurement.
    assert "downtimeMs" not in job_fields(stats)
    assert job_fields({}) == {}
    assert job_fields({"downtime": -1, "data_total": True}, completed=True) == {}


LIBVIRT_NO_SPACE = "migrate: operation failed: migration of disk vda failed: No space left on device"


def test_a_block_migration_without_space_on_the_target_says_so_naming_the_target_and_where_the_guest_stays() -> None:
    # libvirtd 9.0's words when the target's file system filled up during the copy (tests/e2e/test_migration.py).
    message = job_failure(LIBVIRT_NO_SPACE, source="node-a", target="node-b", storage=StorageMode.BLOCK)
    assert message.startswith("node node-b has no space left for the disks of the block migration")
    assert LIBVIRT_NO_SPACE in message and message.endswith("the guest stays on node node-a")
    assert all(is_no_space(e) for e in ("write: Disk quota exceeded", "error -28 (ENOSPC)", LIBVIRT_NO_SPACE.upper()))
    assert not is_no_space("client socket is closed")


def test_other_job_failures_name_the_target_and_libvirts_words_and_an_abort_says_it_was_deleted() -> None:
    other = job_failure("migrate: client socket is closed", source="node-a", target="node-b",
                        storage=StorageMode.BLOCK)
    assert other == ("the live migration to node node-b failed, libvirt: migrate: client socket is closed; the guest "
                     "stays on node node-a")
    # Memory only: a "no space" from elsewhere is not the target's disks.
    assert "has no space" not in job_failure(LIBVIRT_NO_SPACE, source="a", target="b", storage=StorageMode.SHARED)
    aborted = job_failure("operation aborted", source="node-a", target="node-b", storage=StorageMode.BLOCK,
                          aborted=True)
    assert "aborted (the migration was deleted)" in aborted and aborted.endswith("stays on node node-a")


def test_a_target_that_cannot_create_the_disks_says_why_naming_itself() -> None:
    assert prepare_failure("cannot create /d/x/data.qcow2 for the migration: No space left on device",
                           target="node-b").startswith("node node-b has no space left to create the disks")
    assert prepare_failure("disk 'x' (0 bytes) cannot be created for a migration", target="node-b") == (
        "node node-b cannot create the disks for the block migration: disk 'x' (0 bytes) cannot be created for a "
        "migration")


def test_target_disks_that_cannot_all_be_created_leave_nothing_behind(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "images", tmp_path / "disks")
    uid = str(uuid.uuid4())
    with pytest.raises(StorageError):  # "a" is made, then "b" is refused: the directory goes with "a"
        create_target_disks(storage, uid, {"a": 1 << 20, "b": 0})
    assert list((tmp_path / "disks").iterdir()) == []
    # A directory that was there (a retry) stays; only what this call made goes.
    storage.vm_dir(uid).mkdir()
    (storage.vm_dir(uid) / "kept").write_text("")
    with pytest.raises(StorageError):
        create_target_disks(storage, uid, {"a": 1 << 20, "b": 0})
    assert [p.name for p in storage.vm_dir(uid).iterdir()] == ["kept"]
    assert create_target_disks(storage, uid, {"a": 1 << 20}) == {"a": str(storage.disk_path(uid, "a"))}


# --- lock and hand-over ---------------------------------------------------------------------------------------

def test_the_lock_is_taken_only_on_the_version_read_and_released_only_by_its_holder() -> None:
    plain = vm()
    locked = json_patch(plain, lock_ops(plain, "m1"))
    assert locked["metadata"]["annotations"] == {MIGRATING_ANNOTATION: "m1"}
    annotated = vm(annotations={"a": "b"})
    locked2 = json_patch(annotated, lock_ops(annotated, "m1"))
    assert locked2["metadata"]["annotations"] == {"a": "b", MIGRATING_ANNOTATION: "m1"}
    moved_on = dict(plain, metadata={**plain["metadata"], "resourceVersion": "8"})
    with pytest.raises(ApiError):
        json_patch(moved_on, lock_ops(plain, "m1"))
    assert json_patch(locked2, unlock_ops("m1"))["metadata"]["annotations"] == {"a": "b"}
    with pytest.raises(ApiError):
        json_patch(locked2, unlock_ops("m2"))


def test_the_hand_over_moves_the_vm_and_drops_the_lock_in_one_patch() -> None:
    locked = vm(annotations={MIGRATING_ANNOTATION: "m1", "keep": "me"})
    handed = json_patch(locked, handover_ops("m1", "node-b"))
    assert handed["spec"]["nodeName"] == "node-b"
    assert handed["metadata"]["annotations"] == {"keep": "me"}
    with pytest.raises(ApiError):  # aborted meanwhile (another holder): no hand-over
        json_patch(vm(annotations={MIGRATING_ANNOTATION: "m2"}), handover_ops("m1", "node-b"))


# --- the target's definition -------------------------------------------------------------------------------------

def domain_xml(tmp_path: Path, uid: str) -> str:
    storage = tmp_path / "a-disks"
    (storage / uid).mkdir(parents=True)
    spec = parse_spec({"nodeName": "node-a", "memory": "32Mi",
                       "disks": [{"name": "root", "size": "8Mi"}, {"name": "data", "size": "8Mi"}]})
    paths = {d.name: storage / uid / f"{d.name}.qcow2" for d in spec.disks}
    for path in paths.values():
        path.touch()
    return build_domain_xml(owner=Owner("default", "vm1", uid, "node-a"), spec=spec, domain_type="kvm",
                            disk_paths=paths, allowed_dirs=[storage])


def test_the_target_definition_names_the_target_as_owner_and_changes_nothing_else(tmp_path: Path) -> None:
    uid = str(uuid.uuid4())
    xml = domain_xml(tmp_path, uid)
    out = retarget_xml(xml, uid=uid, node="node-b")
    assert parse_owner(out) == Owner("default", "vm1", uid, "node-b")
    assert owned_disk_paths(out) == owned_disk_paths(xml)
    # Written as libvirt stores metadata: the prefix declared on <lvo:instance>, no invented ns0.
    assert "<lvo:instance xmlns:lvo=" in out and "ns0" not in out
    before, after = ET.fromstring(xml), ET.fromstring(out)
    before.find(f"metadata/{NS}instance/{NS}owner").set("node", "node-b")  # type: ignore[union-attr]
    assert ET.tostring(before) == ET.tostring(after)


def test_a_block_migration_moves_the_disks_to_the_targets_files(tmp_path: Path) -> None:
    uid = str(uuid.uuid4())
    xml = domain_xml(tmp_path, uid)
    files = {"root": f"/b/{uid}/root.qcow2", "data": f"/b/{uid}/data.qcow2"}
    out = retarget_xml(xml, uid=uid, node="node-b", disk_files=files)
    assert owned_disks(out) == files
    sources = [s.get("file") for s in ET.fromstring(out).findall("./devices/disk/source")]
    assert sorted(sources) == sorted(files.values())
    with pytest.raises(MigrationXMLError, match="no disk named swap"):
        retarget_xml(xml, uid=uid, node="node-b", disk_files={**files, "swap": "/b/swap.qcow2"})


def test_only_our_own_domains_are_retargeted(tmp_path: Path) -> None:
    uid = str(uuid.uuid4())
    xml = domain_xml(tmp_path, uid)
    with pytest.raises(MigrationXMLError):
        retarget_xml(xml, uid=str(uuid.uuid4()), node="node-b")  # metadata of another domain
    with pytest.raises(MigrationXMLError):
        retarget_xml(f"<domain type='kvm'><name>x</name><uuid>{uid}</uuid></domain>", uid=uid, node="node-b")
    assert owned_disks(f"<domain type='kvm'><name>x</name><uuid>{uid}</uuid></domain>") == {}


def test_the_retargeted_definition_is_accepted_by_libvirt(tmp_path: Path) -> None:
    uid = str(uuid.uuid4())
    conn = libvirt.open("test:///default")
    try:
        xml = domain_xml(tmp_path, uid).replace("type=\"kvm\"", "type=\"test\"", 1)
        dom = conn.defineXML(retarget_xml(xml, uid=uid, node="node-b"))
        try:
            assert parse_owner(dom.XMLDesc(0)) == Owner("default", "vm1", uid, "node-b")
        finally:
            dom.undefine()
    finally:
        conn.close()


# --- drain ------------------------------------------------------------------------------------------------------

def test_a_drain_migrates_the_running_and_paused_vms_of_the_node_and_says_why_not_the_others() -> None:
    def a_vm(name: str, phase: str, node: str = "node-a", **meta: Any) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "ns", **meta}, "spec": {"nodeName": node},
                "status": {"phase": phase}}
    vms = [a_vm("run", "Running"), a_vm("paused", "Paused"), a_vm("off", "Stopped"), a_vm("new", "Provisioning"),
           a_vm("gone", "Running", deletionTimestamp="2026-12-01T00:00:00Z"), a_vm("elsewhere", "Running", "node-c"),
           a_vm("moving", "Running", annotations={MIGRATING_ANNOTATION: "m7"})]
    plan = drain_plan(vms, "node-a", "node-b")
    assert plan.migrate == [("ns", "paused"), ("ns", "run")]
    assert plan.skipped == [("ns", "gone", "being deleted"),
                            ("ns", "moving", "already being migrated (m7)"),
                            ("ns", "new", "not running (phase Provisioning): nothing to migrate live"),
                            ("ns", "off", "not running (phase Stopped): nothing to migrate live")]
    body = migration_body("ns", "run", "node-b", "abc123")
    assert body["spec"] == {"vmName": "run", "targetNode": "node-b"}
    assert body["metadata"]["name"] == "drain-run-abc123"
