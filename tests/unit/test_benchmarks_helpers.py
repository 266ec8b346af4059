"""The benchmarks' pure helpers: CPU time from /proc, the churn's pacing, ratios, the rendered status patches,
the burst's drain time, the summary's verdicts, and the migration run's virsh options and keys."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import libvirt
import pytest
import yaml
from benchmarks.apis import retry_after
from benchmarks.common import cpu_seconds, stat_cpu_ticks
from benchmarks.events import drain_seconds
from benchmarks.foreign import VMS_PER_NODE, churn_schedule, foreign_status, node_names, ratio
from benchmarks.migration import MigrationResult, results, virsh_options
from benchmarks.raw_patches import EVENT_FIELDS, encode, event_patch
from benchmarks.report import TARGETS, Target, migration_line
from benchmarks.scale import mean_request_bytes

from libvirt_operator.api.migration import StorageMode
from libvirt_operator.api.status import event_time
from libvirt_operator.hypervisor.migration import migration_flags
from testbed.control_plane import ControlPlane
from tests.conftest import REPO
from tests.unit.test_crd import validate

# proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime ...
STAT = "4242 (python3 -m (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 157 43 2 1 20 0 5 0 123 456789 1234"


def test_cpu_ticks_are_utime_plus_stime_even_when_the_command_name_has_spaces_and_parentheses() -> None:
    assert stat_cpu_ticks(STAT) == 157 + 43


def test_this_process_has_used_some_cpu_and_more_after_work() -> None:
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert cpu_seconds(os.getpid()) >= before > 0


def test_the_churn_is_paced_evenly_and_round_robin_over_the_vms() -> None:
    schedule = churn_schedule(["a", "b", "c"], per_s=200, seconds=0.05)
    assert [offset for offset, _name, _round in schedule] == pytest.approx([i * 0.005 for i in range(10)])
    assert [name for _offset, name, _round in schedule] == ["a", "b", "c"] * 3 + ["a"]
    assert [round_ for _offset, _name, round_ in schedule] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]


def test_a_churn_over_more_vms_than_patches_patches_each_vm_at_most_once() -> None:
    names = [f"vm{i}" for i in range(10_000)]
    schedule = churn_schedule(names, per_s=200, seconds=20)
    assert len(schedule) == 4000
    assert len({name for _offset, name, _round in schedule}) == 4000
    assert schedule[-1][0] == pytest.approx(3999 / 200)


def test_no_churn_without_rate_or_vms() -> None:
    assert churn_schedule([], per_s=200, seconds=10) == []
    assert churn_schedule(["a"], per_s=0, seconds=10) == []


def test_ratio_of_with_over_without() -> None:
    assert ratio(1.1, 1.0) == pytest.approx(1.1)
    assert ratio(0.0, 0.0) == 1.0
    assert ratio(0.5, 0.0) == float("inf")


def test_foreign_vms_are_spread_over_nodes_of_a_hundred() -> None:
    assert len(node_names("n", 10_000)) == 10_000 // VMS_PER_NODE
    assert len(node_names("n", 1_050)) == 11
    assert node_names("n", 5) == ["n-peer000"]


@pytest.fixture(scope="module")
def status_schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "deploy" / "crds" / "virtualmachines.virt.libvirt-operator.dev.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return schema


@pytest.mark.parametrize("running", [True, False])
def test_the_foreign_churn_writes_a_status_the_crd_accepts(status_schema: dict[str, Any], running: bool) -> None:
    status = foreign_status("other", "ns_vm", "uid-1", running=running)
    assert validate(status_schema, status) == []
    assert status["phase"] == ("Running" if running else "Paused")
    assert {c["type"] for c in status["conditions"]} == {"Ready", "HypervisorConnected"}


def operator_status() -> dict[str, Any]:
    """What the operator writes for a running VM (handlers/vm.py _observed_status)."""
    return {"phase": "Running", "powerState": "Running", "reason": "Unpaused", "message": "", "nodeName": "n",
            "domainName": "ns_vm", "domainUUID": "uid-1", "observedGeneration": 1,
            "lastEvent": {"type": "Resumed", "detail": "Unpaused", "time": "2026-12-01T12:00:00.000001Z"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": "the guest is running",
                            "lastTransitionTime": "2026-12-01T12:00:00Z"}]}


def test_a_suspend_shaped_raw_patch_has_the_five_fields_and_a_new_event_time_of_the_same_length() -> None:
    status = operator_status()
    patch = event_patch(status, 1_800_000_000.5, last_event=True)
    assert set(patch) == {"status"} and tuple(patch["status"]) == EVENT_FIELDS
    assert patch["status"]["lastEvent"] == {**status["lastEvent"], "time": event_time(1_800_000_000.5)}
    assert patch["status"]["conditions"] == status["conditions"]
    assert status["lastEvent"]["time"] == "2026-12-01T12:00:00.000001Z"  # the input is left alone
    assert len(encode(patch)) == len(json.dumps({"status": {k: status[k] for k in EVENT_FIELDS}}).encode())


def test_a_resume_shaped_raw_patch_has_no_last_event_and_moves_the_condition_times() -> None:
    status = operator_status()
    patch = event_patch(status, 1_800_000_000.5, last_event=False)
    assert tuple(patch["status"]) == ("phase", "powerState", "reason", "conditions")
    [ready] = patch["status"]["conditions"]
    assert ready == {**status["conditions"][0], "lastTransitionTime": "2027-01-15T08:00:00Z"}
    same_shape = {"status": {k: status[k] for k in ("phase", "powerState", "reason", "conditions")}}
    assert len(encode(patch)) == len(json.dumps(same_shape).encode())


def test_a_resume_shaped_raw_patch_always_changes_the_condition_time() -> None:
    status = operator_status()
    at = 1_764_590_400.7  # 2025-12-01T12:00:00.7Z
    status["conditions"][0]["lastTransitionTime"] = "2025-12-01T12:00:00Z"
    [ready] = event_patch(status, at, last_event=False)["status"]["conditions"]
    assert ready["lastTransitionTime"] == "2025-12-01T11:59:59Z"


def test_the_drain_ends_at_the_completion_of_the_phases_last_patch() -> None:
    spans = [(10.0, 10.3), (10.0, 10.1), (10.1, 10.2), (10.5, 10.9)]  # the last: a later, unrelated patch
    assert drain_seconds(spans, 10.0, 3, fallback=99.0) == pytest.approx(0.3)


def test_the_drain_falls_back_to_the_polled_time_without_enough_logged_patches() -> None:
    assert drain_seconds([], 10.0, 3, fallback=0.4) == 0.4
    assert drain_seconds([(10.0, 10.1)], 10.0, 3, fallback=0.4) == 0.4


def test_mean_request_bytes_between_two_readings() -> None:
    assert mean_request_bytes((1000.0, 10.0), (1900.0, 13.0)) == pytest.approx(300.0)
    assert mean_request_bytes(None, None) is None
    assert mean_request_bytes((1000.0, 10.0), (1000.0, 10.0)) is None


def test_a_floor_target_is_met_at_or_above_its_limit() -> None:
    floor = Target("x", 0.8, "x >= 0.8", at_least=True)
    ceiling = Target("y", 1.2, "y <= 1.2")
    assert floor.met(0.8) and floor.met(0.95) and not floor.met(0.79)
    assert ceiling.met(1.2) and not ceiling.met(1.21)


def test_the_issues_targets_are_in_the_summary() -> None:
    by_key = {t.key: t for t in TARGETS}
    assert by_key["status_drain_over_raw"].at_least and by_key["status_drain_over_raw"].limit == 0.8
    assert by_key["foreign_rss_ratio"].limit == 1.10 and by_key["foreign_cpu_ratio"].limit == 1.20



def test_a_429_is_retried_after_the_servers_retry_after_within_bounds() -> None:
    assert retry_after("1") == 1.0
    assert retry_after(None) == 1.0 and retry_after("soon") == 1.0
    assert retry_after("60") == 5.0 and retry_after("0") == 0.1


def test_virsh_migrates_with_the_flags_the_operator_passes_for_each_storage_mode() -> None:
    assert virsh_options(migration_flags(StorageMode.SHARED)) == [
        "--live", "--p2p", "--persistent", "--undefinesource", "--unsafe"]
    assert virsh_options(migration_flags(StorageMode.BLOCK)) == [
        "--live", "--p2p", "--persistent", "--undefinesource", "--copy-storage-all"]
    with pytest.raises(ValueError, match="no virsh migrate option"):
        virsh_options(migration_flags(StorageMode.NONE) | libvirt.VIR_MIGRATE_TLS)


def test_the_migration_keys_are_p50s_their_ratio_and_the_downtimes() -> None:
    keys = results(MigrationResult(512, operator_s=[1.0, 2.0, 3.0], operator_job_s=[0.5, 0.6, 0.7],
                                   operator_downtime_ms=[40, 50, 90], virsh_s=[0.5, 1.0, 4.0],
                                   virsh_job_s=[0.4, 0.5, 0.6], virsh_downtime_ms=[20, 30, 25]))
    assert (keys["migration_operator_p50_s"], keys["migration_virsh_p50_s"], keys["migration_over_virsh"]) == (
        2.0, 1.0, 2.0)
    assert (keys["migration_downtime_operator_ms"], keys["migration_downtime_virsh_ms"]) == (50, 25)
    assert (keys["migration_guest_mib"], keys["migration_count"], keys["migration_virsh_max_s"]) == (512, 3, 4.0)
    assert "operator p50 2 s" in migration_line(keys) and "2x" in migration_line(keys)


def test_audit_positions_stay_valid_when_the_api_server_rotates_its_audit_log(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path)
    logs = plane.audit_log.parent
    logs.mkdir(parents=True)
    plane.audit_log.write_bytes(b"a1\na2\n")
    start = plane.audit_offset()
    with plane.audit_log.open("ab") as log:
        log.write(b"b1\nb2\n")
    plane.audit_log.rename(logs / "audit-2026-12-02T02-39-31.617.log")  # what kube-apiserver does at 100 MB
    plane.audit_log.write_bytes(b"c1\nc2 still being writ")
    lines = list(plane.audit_lines(start))
    assert [line for line, _end in lines] == [b"b1\n", b"b2\n", b"c1\n"]
    assert [line for line, _end in plane.audit_lines(lines[1][1])] == [b"c1\n"]  # resumed from a position
    assert plane.audit_offset() == len(b"a1\na2\nb1\nb2\nc1\nc2 still being writ")
