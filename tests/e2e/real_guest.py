"""What the tests that boot the real Debian guest share: its images (hack/guest-image.sh) and the CRD check."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.harness import Cluster

SCRIPT = REPO / "hack" / "guest-image.sh"
BOOT_TIMEOUT = 600.0  # TCG: about 35 s on an idle machine, minutes beside other suites' guests


def guest_images(images: Path) -> None:
    """The guest's qcow2, kernel, initrd and kernel command line in ``images`` (built once per machine)."""
    if os.geteuid() != 0:
        pytest.skip("hack/guest-image.sh builds as root")
    out = subprocess.run(["bash", str(SCRIPT), str(images)], capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, f"hack/guest-image.sh failed:\n{out.stderr[-3000:]}"


def crd_serves_guest_fields(cluster: Cluster) -> None:
    """The shared control plane's CRD is this checkout's (the session applied it); another checkout's test
    session applying an older one prunes these fields, which would fail this test for no fault of its own."""
    crd = json.loads(cluster.kubectl("get", "crd", "virtualmachines.virt.libvirt-operator.dev", "-o", "json"))
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    missing = {"cloudInit", "sshAuthorizedKeys", "boot"} - set(spec)
    assert not missing, (f"the served CRD lacks {sorted(missing)}: another test session replaced it with an older "
                         "one; run again when it is done")
