"""End-to-end harness: the test bed (operator/testbed/) under the names the tests use.

The API is the real control plane of hack/cluster.sh by default; LVO_API=emulator picks the emulator.
"""

from __future__ import annotations

from testbed import (
    OPERATOR,
    QEMU_URI,
    Api,
    Cluster,
    ControlPlane,
    EmulatorApi,
    Host,
    OperatorProcess,
    RealApi,
    free_port,
    libvirtd_answers,
    operators,
    unique,
    vm_manifest,
)
from testbed.polling import wait_for as poll

ApiServer = EmulatorApi  # the emulator in a process of its own, for tests that need exactly that

__all__ = ["OPERATOR", "QEMU_URI", "Api", "ApiServer", "Cluster", "ControlPlane", "EmulatorApi", "Host",
           "OperatorProcess", "RealApi", "free_port", "libvirtd_answers", "operators", "poll", "unique",
           "vm_manifest"]
