"""A cluster of many nodes on paper, from one run's measured per-event costs (docs/benchmarks.md).

Run: `PYTHONPATH=.:operator .venv/bin/python -m benchmarks.model RESULTS.json [--nodes 1000] [--vms 100]
[--changes-per-hour 6] [--object-bytes B]`. It prints a Markdown table; every input is either a key of the
results file (named in the table) or a flag (the workload assumed), nothing else.

What it models, per node and at the API server, with the node-scoped watch (the operator's) and without it
(every operator watching every VM, as before issue 15):
- status writes: every lifecycle change of a VM is one status patch (``api_writes_per_event``);
- watch fan-out: the API server sends each change to every watcher whose selector matches it: with the
  selector only the VM's own node, without it every node;
- the start-up list: the operator lists once at start-up (then watches from that resourceVersion through
  reconnects; only a 410 lists again): a node's own VMs with the selector, every VM without;
- memory: the operator's RSS per cached VM from the memory run, times the VMs it would cache.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Workload:
    nodes: int = 1000
    vms_per_node: int = 100
    changes_per_vm_hour: float = 6.0  # status changes per VM per hour (reboots, stops, agent data)
    # A Running VirtualMachine as a watch event carries it, managedFields included: 2.8-3.3 kB measured
    # (`kubectl get lvm -o json --show-managed-fields` on e2e VMs, 2026-12-01); 1.4-1.6 kB without them.
    object_bytes: int = 3000


@dataclass(frozen=True)
class Row:
    quantity: str
    with_selector: str
    without: str
    source: str


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g} B"


def _rate(n: float) -> str:
    return f"{n:,.3g}/s" if n < 1000 else f"{n:,.0f}/s"


def model(results: dict[str, Any], work: Workload) -> list[Row]:
    """Pure: the table rows for ``work`` from one run's ``results``."""
    vms = work.nodes * work.vms_per_node
    writes_per_event = float(results.get("api_writes_per_event", 1.0))
    writes = vms * work.changes_per_vm_hour / 3600 * writes_per_event  # cluster-wide status patches/s
    node_writes = writes / work.nodes
    obj = work.object_bytes
    per_vm_mib = (float(results["rss_mib"]) - float(results["rss_empty_mib"])) / max(int(results["rss_vms"]), 1)
    empty = float(results["rss_empty_mib"])
    raw = float(results["patch_throughput_raw_per_s"])
    server_ms = results.get("api_server_patch_p50_ms")
    each = "" if server_ms is None else f", {float(server_ms):.0f} ms each (`api_server_patch_p50_ms`)"
    rows = [
        Row("VMs in the cluster", f"{vms:,}", f"{vms:,}", "workload"),
        Row("status patches/s, cluster (API server writes)", _rate(writes), _rate(writes),
            f"{work.changes_per_vm_hour:g} changes/VM/h x `api_writes_per_event` {writes_per_event:g}"),
        Row("status patches/s, one node", _rate(node_writes), _rate(node_writes), "same"),
        Row("patch bytes/s into the API server", _size(writes * float(results["status_patch_bytes"])) + "/s",
            _size(writes * float(results["status_patch_bytes"])) + "/s", "`status_patch_bytes`"),
        Row("watch events/s one operator receives", _rate(node_writes), _rate(writes),
            "its node's changes only / every change"),
        Row("watch events/s the API server sends (all nodes)", _rate(writes), _rate(writes * work.nodes),
            "x 1 watcher / x every node"),
        Row("watch bytes/s the API server sends", _size(writes * obj) + "/s",
            _size(writes * obj * work.nodes) + "/s", f"{obj} B per object"),
        Row("start-up list of one operator", f"{work.vms_per_node:,} objects, {_size(work.vms_per_node * obj)}",
            f"{vms:,} objects, {_size(vms * obj)}", "once at start-up, then watched (relisted after a 410)"),
        Row("all nodes restarted (DaemonSet rollout): listed", _size(work.nodes * work.vms_per_node * obj),
            _size(work.nodes * vms * obj), "every operator's start-up list"),
        Row("operator RSS", f"{empty + work.vms_per_node * per_vm_mib:.0f} MiB",
            f"{empty + vms * per_vm_mib:,.0f} MiB",
            f"`rss_empty_mib` {empty:.0f} + {per_vm_mib * 1024:.0f} KiB per cached VM (`rss_mib` at `rss_vms`)"),
        Row("API server's patch capacity on the measured machine", _rate(raw), _rate(raw),
            f"`patch_throughput_raw_per_s` (16 connections){each}"),
        Row("share of that capacity the cluster's writes use", f"{writes / raw:.0%}", f"{writes / raw:.0%}",
            "patches/s over capacity"),
    ]
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| quantity | node-scoped watch | every operator watches every VM | from |", "|---|---|---|---|"]
    lines += [f"| {r.quantity} | {r.with_selector} | {r.without} | {r.source} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a benchmarks/run JSON file")
    parser.add_argument("--nodes", type=int, default=Workload.nodes)
    parser.add_argument("--vms", type=int, default=Workload.vms_per_node, help="VMs per node")
    parser.add_argument("--changes-per-hour", type=float, default=Workload.changes_per_vm_hour,
                        help="status changes per VM per hour")
    parser.add_argument("--object-bytes", type=int, default=Workload.object_bytes,
                        help="bytes of one VirtualMachine with its status, as served")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    work = Workload(args.nodes, args.vms, args.changes_per_hour, args.object_bytes)
    print(markdown(model(results, work)))


if __name__ == "__main__":
    main()
