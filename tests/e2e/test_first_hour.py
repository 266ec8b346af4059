"""The first hour of a new user (issue 17), on real libvirt + QEMU through the API emulator."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from typing import Any

from tests.e2e.harness import Cluster, OperatorProcess, poll

# What a Node without a kubelet carries: local mode registers one with a partial nodeInfo.
PARTIAL_NODE_INFO = {"kubeletVersion": "none", "architecture": platform.machine(), "operatingSystem": "linux"}


def _observe_for(seconds: float, check: Callable[[], None], *, interval: float = 0.5) -> None:
    """Runs ``check`` over a window of ``seconds``: it must hold the whole time (fails at the first miss)."""
    deadline = time.monotonic() + seconds
    while True:
        check()
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def _warnings(proc: OperatorProcess) -> list[str]:
    text = proc.log.read_text(errors="replace")
    return [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line
            or " CRITICAL " in line or "Traceback" in line]


def test_an_operator_on_nodes_without_a_kubelet_logs_no_warning_for_a_minute(
        cluster: Cluster, make_operator: Any, node_name: str) -> None:
    # A Node without a kubelet has no or a partial status.nodeInfo: the client's models refuse the answer
    # to each patch of such a Node (the patch lands), which was logged and retried every 10 s.
    nodes = {f"{node_name}-bare": None, f"{node_name}-partial": PARTIAL_NODE_INFO}
    for name, info in nodes.items():
        node: dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
        if info is not None:
            node["status"] = {"nodeInfo": info}
        cluster.kubectl("create", "-f", "-", input_text=json.dumps(node))
    procs = [make_operator(name) for name in nodes]

    def published(name: str) -> bool:
        node = json.loads(cluster.kubectl("get", "node", name, "-o", "json"))
        labels = node["metadata"].get("labels") or {}
        ready = [c for c in (node.get("status") or {}).get("conditions") or [] if c["type"] == "LibvirtReady"]
        return (labels.get("virt.libvirt-operator.dev/schedulable") == "true"
                and "virt.libvirt-operator.dev/cpu-model" in labels
                and [c["status"] for c in ready] == ["True"])
    for name in nodes:
        poll(lambda: published(name), timeout=30, what=f"node {name} to get its capabilities and LibvirtReady")  # noqa: B023

    def quiet() -> None:
        for proc in procs:
            assert _warnings(proc) == [], f"operator {proc.node} logged:\n" + "\n".join(_warnings(proc))
    _observe_for(60, quiet)
    # Each Node's status was written once (LibvirtReady), not retried.
    assert cluster.api.requests().get(("patch", "nodes/status"), 0) == len(nodes)
