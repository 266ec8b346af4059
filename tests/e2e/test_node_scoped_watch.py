"""Node-scoped VirtualMachine watch (issue 15 item 1): each operator lists and watches only its node's VMs
(fieldSelector spec.nodeName=<node>, filtered by the API server), and what used to reach it as a MODIFIED
event of another node's VM (a move) or a DELETED one still converges."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from libvirt_operator.api.constants import FINALIZER, PLURAL
from libvirt_operator.kube.client import KubeClient, load_api_client
from libvirt_operator.kube.node_scope import node_selector
from libvirt_operator.kube.vm_watch import VMInformer, WatchSink
from testbed.polling import until
from tests.e2e.harness import Cluster, Host, RealApi, poll, unique, vm_manifest


def watch_events(operator: Any, node: str) -> int:
    """libvirt_operator_vm_watch_events_total summed over event types, for "this" or "other" node's VMs."""
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith("libvirt_operator_vm_watch_events_total{") and f'node="{node}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def logged_events_for(operator: Any, name: str) -> list[str]:
    return re.findall(rf"VirtualMachine watch event \w+ for default/{re.escape(name)} ", operator.tail(100000))


def test_an_operator_gets_no_watch_event_for_another_nodes_vms_and_asks_the_api_server_to_filter(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str) -> None:
    operator = make_operator(node_name)
    other = f"{node_name}-b"
    first, last = unique("own"), unique("own")
    theirs = [unique("theirs") for _ in range(3)]
    cluster.apply(vm_manifest(first, node_name))
    cluster.wait_phase(first, "Running")
    for name in theirs:
        cluster.apply(vm_manifest(name, other))
    cluster.patch_spec(theirs[0], {"runStrategy": "Halted"})  # a MODIFIED of B's VM too
    cluster.kubectl("delete", "lvm", theirs[1])  # and a DELETED
    cluster.apply(vm_manifest(last, node_name))  # the watch is ordered: once this arrived, B's would have
    cluster.wait_phase(last, "Running")

    own_events, other_events = watch_events(operator, "this"), watch_events(operator, "other")
    print(f"\noperator of {node_name}: {own_events} watch events of its own VMs, {other_events} of node {other}'s")
    assert other_events == 0
    assert own_events >= 4  # at least ADDED and the status writes of both
    assert all(logged_events_for(operator, name) == [] for name in theirs)
    assert logged_events_for(operator, last)
    assert all(cluster.status(name) == {} for name in theirs[::2])  # never written

    if isinstance(cluster.api, RealApi):  # the API server's side: every list and watch carried the selector
        selector = urllib.parse.quote(f"spec.nodeName={node_name}", safe="")
        vm_requests = [(verb, uri) for verb, resource, uri in cluster.api.request_uris()
                       if resource == PLURAL and verb in ("list", "watch")]
        mine = [(verb, uri) for verb, uri in vm_requests if f"fieldSelector={selector}" in uri]
        assert {verb for verb, _uri in mine} == {"list", "watch"}, vm_requests
        # Other operators on this control plane (other tests' nodes) are node-scoped too: none lists all.
        assert all("fieldSelector=spec.nodeName" in uri for _verb, uri in vm_requests), vm_requests


def test_a_vm_moved_to_another_node_loses_its_domain_here_and_keeps_its_shared_disks(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str, dirs: tuple[Path, Path]) -> None:
    operator = make_operator(node_name, "--shared-storage", "true")
    other = f"{node_name}-b"
    name = unique("moved")
    cluster.apply(vm_manifest(name, node_name, disks=[{"name": "data", "size": "8Mi"}]))
    uid = cluster.wait_phase(name, "Running")["domainUUID"]

    cluster.patch_spec(name, {"nodeName": other})
    poll(lambda: host.domain(uid) is None, timeout=30, what="the moved VM's domain removed here")
    vm = cluster.get(name)
    assert vm is not None and vm["spec"]["nodeName"] == other and "deletionTimestamp" not in vm["metadata"]
    assert FINALIZER in vm["metadata"]["finalizers"]  # B's operator's to release, not ours
    assert (dirs[0] / uid / "data.qcow2").exists()  # shared storage: B's operator needs them
    log = operator.tail(100000)
    assert f"moved to node {other}" in log and "vanished without clean-up" not in log
    assert re.search(rf"VirtualMachine watch event DELETED for default/{name} ", log)  # how the move arrives
    assert watch_events(operator, "other") == 0


def test_deleted_vms_converge_normal_and_forced(cluster: Cluster, host: Host, make_operator: Any,
                                                node_name: str) -> None:
    make_operator(node_name)
    normal, forced = unique("deleted"), unique("forced")
    cluster.apply(vm_manifest(normal, node_name))
    cluster.apply(vm_manifest(forced, node_name))
    uids = {n: cluster.wait_phase(n, "Running")["domainUUID"] for n in (normal, forced)}

    cluster.kubectl("delete", "lvm", normal, "--wait=false")
    cluster.kubectl("patch", "lvm", forced, "--type", "json",
                    "-p", json.dumps([{"op": "remove", "path": "/metadata/finalizers"}]))
    cluster.kubectl("delete", "lvm", forced, "--wait=false")
    poll(lambda: cluster.get(normal) is None and cluster.get(forced) is None, timeout=60, what="both VMs gone")
    poll(lambda: host.domain(uids[normal]) is None and host.domain(uids[forced]) is None, timeout=30,
         what="both domains removed")


def test_a_vm_moved_while_its_operator_was_down_loses_its_domain_at_start_up_and_is_not_touched(
        cluster: Cluster, host: Host, make_operator: Any, node_name: str) -> None:
    operator = make_operator(node_name)
    other = f"{node_name}-b"
    moved, gone = unique("moved"), unique("gone")
    cluster.apply(vm_manifest(moved, node_name))
    cluster.apply(vm_manifest(gone, node_name))
    uids = {n: cluster.wait_phase(n, "Running")["domainUUID"] for n in (moved, gone)}
    operator.stop()

    cluster.patch_spec(moved, {"nodeName": other})
    cluster.kubectl("patch", "lvm", gone, "--type", "json",
                    "-p", json.dumps([{"op": "remove", "path": "/metadata/finalizers"}]))
    cluster.kubectl("delete", "lvm", gone)
    before = cluster.get(moved)
    assert before is not None

    operator.start()  # ready: the start-up scan is done
    assert host.domain(uids[moved]) is None and host.domain(uids[gone]) is None
    log = operator.tail(100000)
    assert re.search(rf"VM default/{moved} now belongs to node {other}", log)  # moved, not orphaned
    assert re.search(rf"default_{gone} \(VM default/{gone}, uid \S+\): its VirtualMachine no longer exists", log)
    after = cluster.get(moved)
    assert after is not None and after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_the_periodic_full_sync_runs_over_this_nodes_vms_only(cluster: Cluster, make_operator: Any,
                                                              node_name: str) -> None:
    operator = make_operator(node_name)  # --sync-interval 5 (harness)
    own = [unique("own") for _ in range(2)]
    for name in own:
        cluster.apply(vm_manifest(name, node_name))
    cluster.apply(vm_manifest(unique("theirs"), f"{node_name}-b"))
    for name in own:
        cluster.wait_phase(name, "Running")

    def synced() -> bool:
        return bool(re.search(r"full sync: 2 VMs of this node, \d+ domains on the host, 0 drifted",
                              operator.tail(400)))
    poll(synced, timeout=30, what="a full sync over this node's two VMs")


def test_the_vm_watch_relists_when_the_api_server_says_its_version_is_too_old(
        cluster: Cluster, node_name: str) -> None:
    """The operator's informer (kube/vm_watch.py) on the real kube-apiserver, in this process: asked to watch
    from resourceVersion 1, long compacted, it gets the watch cache's in-stream 410, relists this node's VMs
    (not older than that version: from the cache), and watches on from the listing's version."""
    if not isinstance(cluster.api, RealApi):
        pytest.skip("the emulator's expiry is tested in tests/unit/test_node_scope.py (a short history)")
    kubeconfig = str(cluster.api.kubeconfig)
    listed_first, created_later = unique("listed"), unique("later")
    cluster.apply(vm_manifest(listed_first, node_name))  # no operator runs for this node: nothing else writes
    cluster.apply(vm_manifest(unique("theirs"), f"{node_name}-b"))
    events: list[tuple[str | None, str, str]] = []
    relisted: list[list[str]] = []
    reasons: list[str] = []

    def on_event(kind: str | None, body: Mapping[str, Any]) -> None:
        events.append((kind, body["metadata"]["name"], body["spec"]["nodeName"]))

    async def main() -> None:
        kube = KubeClient(await load_api_client(kubeconfig))
        informer = VMInformer(kube, WatchSink(on_event, lambda items: relisted.append(
            [item["metadata"]["name"] for item in items])), namespace=None,
            selector=lambda: node_selector(node_name), server_timeout=30, client_timeout=40,
            on_relist=reasons.append)
        task = asyncio.create_task(informer.run("1"))
        try:
            await until(lambda: relisted, limit=30, what="the relist")
            await asyncio.to_thread(cluster.apply, vm_manifest(created_later, node_name))
            await until(lambda: ("ADDED", created_later, node_name) in events, limit=30, what="the later VM's ADDED")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await kube.close()

    asyncio.run(main())
    print(f"\nrelist reasons {reasons}, listed {relisted}, events {[(k, n) for k, n, _ in events]}")
    assert reasons == ["expired"] and len(relisted) == 1
    assert relisted[0] == [listed_first]  # node-scoped: the other node's VM is not listed
    assert (None, listed_first, node_name) in events
    assert {node for _kind, _name, node in events} == {node_name}
