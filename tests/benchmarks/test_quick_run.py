"""`benchmarks/run` runs end to end and writes every key as a number; no timing is asserted here.

It runs on the API the suite runs on (LVO_API: the real control plane by default, or the emulator), at
sizes below `--quick`'s (the same code at every size: a quick run took 206 s of CI, this one under a
minute)."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from testbed import libvirtd_answers
from tests.conftest import API_KIND, REPO

pytestmark = pytest.mark.e2e  # real libvirtd and QEMU guests, like tests/e2e

KEYS = (
    "creation_to_running_p50_s", "creation_to_running_p95_s", "vms_created",
    "event_to_status_p50_ms", "event_to_status_p99_ms", "raw_event_p99_ms", "vms_for_events",
    "api_writes_per_vm_create", "api_writes_per_event",
    "startup_reconcile_s", "startup_reconcile_domains",
    "rss_mib", "rss_vms",
    "loop_lag_max_ms",
    "foreign_rss_ratio", "foreign_cpu_ratio", "foreign_vms",
    "patch_throughput_raw_per_s", "status_drain_per_s", "status_drain_over_raw",
    "status_drain_over_raw_min", "status_drain_over_raw_max", "status_drain_rounds",
)
# The live-migration phase's (benchmarks/migration.py): written unless the phase says it was skipped (the
# emulator, not root).
MIGRATION_KEYS = ("migration_operator_p50_s", "migration_virsh_p50_s", "migration_over_virsh",
                  "migration_downtime_operator_ms", "migration_downtime_virsh_ms", "migration_guest_mib")


@pytest.mark.timeout(900)
def test_a_small_run_writes_every_key_as_a_number_and_a_plot(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if not libvirtd_answers():
        if os.environ.get("CI"):
            pytest.fail("libvirtd does not answer at qemu:///system; hack/setup.sh starts it")
        pytest.skip("libvirtd does not answer at qemu:///system (run hack/setup.sh)")
    if API_KIND == "real":
        request.getfixturevalue("control_plane")  # up (or built) here, under the fixture's rules, not in the run
    output = tmp_path / "quick.json"
    sizes = ["--created", "2", "--scale", "30", "--rss", "30", "--foreign", "100", "--foreign-own", "5",
             "--foreign-seconds", "4"]
    run = subprocess.run([str(REPO / "benchmarks" / "run"), "--quick", *sizes, "--api", API_KIND,
                          "--output", str(output)], capture_output=True, text=True, timeout=850)
    assert run.returncode == 0, f"benchmarks/run failed:\n{run.stdout}\n{run.stderr[-4000:]}"

    results = json.loads(output.read_text())
    migrated = "[5/5] migration: skipped" not in run.stdout
    not_numbers = {k: results.get(k) for k in (*KEYS, *(MIGRATION_KEYS if migrated else ()))
                   if isinstance(results.get(k), bool) or not isinstance(results.get(k), int | float)
                   or not math.isfinite(results[k])}
    assert not not_numbers, f"keys missing or not numbers: {not_numbers}"
    assert results.pop("api") == API_KIND
    assert all(isinstance(v, int | float) for v in results.values()), "every value but the API's name is a number"
    assert results["vms_created"] > 0 and results["vms_for_events"] > 0 and results["rss_vms"] > 0
    assert results["foreign_vms"] > 0 and results["patch_throughput_raw_per_s"] > 0
    # The drain ratio is the median of three (burst, raw) pairs, one of them.
    assert results["status_drain_rounds"] == 3
    assert results["status_drain_over_raw_min"] <= results["status_drain_over_raw"] \
        <= results["status_drain_over_raw_max"]
    assert output.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "event to status p99" in run.stdout  # the human summary, with a verdict per target
