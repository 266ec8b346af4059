"""--domain-type kvm on a host whose KVM cannot run a Linux kernel (kvm_pvm): QEMU stops the guest on an internal
error, and the status says so (reason InternalError, a Warning Event), not a user's pause.

Under kvm_pvm the real Debian guest's kernel crawls through its early boot, silently, for about three minutes
of one core (185 s on an idle machine) before KVM fails to emulate a ``lock cmpxchg16b`` and QEMU stops it.
So it runs on a hypervisor host of its own (testbed.hypervisors: its own libvirtd in namespaces of its own),
which lets hack/test.sh run it beside the tests that kill and restart the machine's libvirtd, where the cores
are half idle, instead of beside the real TCG guest, where they are not.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from testbed.hypervisors import HypervisorHosts
from tests.conftest import report_line
from tests.e2e.harness import Cluster, OperatorProcess, poll, unique, vm_manifest
from tests.e2e.real_guest import BOOT_TIMEOUT, crd_serves_guest_fields, guest_images

pytestmark = pytest.mark.timeout(1500 + BOOT_TIMEOUT)


def test_a_real_guest_that_kvm_cannot_run_shows_the_internal_error_not_a_pause(
        cluster: Cluster, node_name: str, pytestconfig: pytest.Config) -> None:
    if not Path("/sys/module/kvm_pvm").exists() or os.geteuid() != 0:
        pytest.skip("only a kvm_pvm host makes QEMU stop a real guest on an internal error (and the image "
                    "builds as root)")
    base = Path(tempfile.mkdtemp(prefix="lvo-e2e-kvm-", dir="/var/tmp"))
    base.chmod(0o755)
    storage, images = base / "disks", base / "images"
    storage.mkdir()
    images.mkdir()
    try:
        guest_images(images)
        with HypervisorHosts([f"{node_name}-{uuid.uuid4().hex[:4]}"]) as hosts:
            _stopped_on_an_internal_error(cluster, hosts, storage, images, pytestconfig)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _stopped_on_an_internal_error(cluster: Cluster, hosts: HypervisorHosts, storage: Path, images: Path,
                                  pytestconfig: pytest.Config) -> None:
    host = hosts.hosts[0]
    operator = OperatorProcess(cluster.api, host.name, storage, images, "--domain-type", "kvm",
                               libvirt_uri=host.uri)
    name = unique("kvmfail")
    try:
        operator.start()
        crd_serves_guest_fields(cluster)
        cmdline = (images / "debian-cloud.cmdline").read_text().strip()
        manifest = vm_manifest(
            name, host.name, memory="512Mi", disks=[{"name": "root", "image": "debian-cloud.qcow2"}],
            boot={"kernel": "debian-cloud.vmlinuz", "initrd": "debian-cloud.initrd", "cmdline": cmdline},
            terminationGracePeriodSeconds=5)
        # Polled: the tests beside it (hack/test.sh's disruptive lane) stop the API server for a while.
        poll(lambda: cluster.apply(manifest) or True, timeout=120, interval=1.0, what=f"kubectl apply of {name}")
        applied = time.monotonic()
        status = cluster.wait_phase(name, "Paused", timeout=BOOT_TIMEOUT, reason="InternalError")
        report_line(pytestconfig, f"kvm_pvm: a real kernel stopped on an internal error "
                    f"{time.monotonic() - applied:.1f} s after apply")
        assert "internal error" in status["message"] and "--domain-type" in status["message"], status
        assert "GuestInternalError" in cluster.event_reasons(name)
    finally:
        cluster.kubectl("delete", "lvm", name, "--ignore-not-found", "--wait=true", "--timeout=50s", check=False)
        operator.stop()
