"""A guest that KVM cannot run, on a nested kvm_pvm /dev/kvm (the machines this project is tested on): with
--domain-type kvm, QEMU stops the guest on a KVM internal error, and the status says so. The guest is
testbed.kvm_payload's kernel, which reaches the instruction kvm_pvm cannot emulate in seconds (a Debian
kernel reaches the same one in its slab allocator after minutes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from testbed import kvm_payload
from tests.conftest import report_line
from tests.e2e.harness import Cluster, poll, unique, vm_manifest


def test_a_guest_that_kvm_cannot_run_shows_the_internal_error_not_a_pause(
        cluster: Cluster, make_operator: Any, dirs: tuple[Path, Path], node_name: str,
        pytestconfig: pytest.Config) -> None:
    """Paused with reason InternalError, a message that names --domain-type, a Warning Event: not a user's
    pause (spec.paused stays false)."""
    if not Path("/sys/module/kvm_pvm").exists():
        pytest.skip("only a kvm_pvm host makes QEMU stop a guest on a KVM internal error")
    _, images = dirs
    kernel = kvm_payload.build(images)
    make_operator(node_name, "--domain-type", "kvm")
    name = unique("kvmfail")
    cluster.apply(vm_manifest(name, node_name, boot={"kernel": kernel}, terminationGracePeriodSeconds=5))
    applied = time.monotonic()
    status = cluster.wait_phase(name, "Paused", timeout=300, reason="InternalError")
    report_line(pytestconfig, f"kvm_pvm: a guest stopped on a KVM internal error {time.monotonic() - applied:.1f} s "
                "after apply")
    assert "internal error" in status["message"] and "--domain-type" in status["message"], status
    poll(lambda: "GuestInternalError" in cluster.event_reasons(name), timeout=30, what="the Warning Event")
    assert cluster.get(name)["spec"]["paused"] is False  # type: ignore[index]
