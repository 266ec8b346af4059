"""The operator in this process, on libvirt's test:///default driver, against the API of the run (apis.py).

test:///default keeps its state per process, so whatever acts on the domains (the event burst, the raw
libvirt listener, a second operator instance) has to live in the operator's process. The operator runs on
its own loop in its own thread (libvirt_operator.testing.OperatorThread), as in production. It reads
what an operator process gets in its environment from this process's (apis.process_env: POD_NAMESPACE, the
namespace of its Lease on the real API, where the chart's Role lets it hold one).
"""

from __future__ import annotations

from pathlib import Path

import libvirt

from libvirt_operator.hypervisor import event_loop
from libvirt_operator.settings import Settings
from libvirt_operator.testing import OperatorThread
from testbed.hosts import remove_test_domains

__all__ = ["OperatorThread", "open_test_driver", "remove_test_domains", "test_settings"]

TEST_URI = "test:///default"


def test_settings(node: str, kubeconfig: Path, base: Path) -> Settings:
    return Settings(node_name=node, libvirt_uri=TEST_URI, kubeconfig=str(kubeconfig), image_dir=base / "images",
                    storage_dir=base / "disks", health_port=0, metrics_port=0, sync_interval=3600,
                    log_level="WARNING")


def open_test_driver() -> libvirt.virConnect:
    """A connection of our own to the shared in-memory driver, with event delivery on libvirt's loop."""
    event_loop.ensure_running()
    return libvirt.open(TEST_URI)


