"""The project's test bed: the processes the end-to-end tests and the benchmarks start and drive.

- `control_plane`: the real Kubernetes control plane of `hack/cluster.sh`, the operator's identity under the
  chart's RBAC, and a per-test view of it (`RealApi`) with a fault-injecting proxy and audit-log counts;
- `emulator_api`: the project's API emulator (`python -m kube_emulator`) behind the same interface;
- `operators`, `hosts`, `clients`: operator processes, the libvirt host, the API as a user sees it.

Both the tests and `benchmarks/run` import it; it imports neither (and needs no pytest).
"""

from testbed.clients import Api, Cluster, unique, vm_manifest
from testbed.control_plane import ControlPlane, RealApi
from testbed.emulator_api import EmulatorApi
from testbed.hosts import QEMU_URI, Host, libvirtd_answers
from testbed.net import free_port
from testbed.operators import OPERATOR, OperatorProcess, operators
from testbed.polling import wait_for

__all__ = ["OPERATOR", "QEMU_URI", "Api", "Cluster", "ControlPlane", "EmulatorApi", "Host", "OperatorProcess",
           "RealApi", "free_port", "libvirtd_answers", "operators", "unique", "vm_manifest", "wait_for"]
