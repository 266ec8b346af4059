"""Host-level reconciliation: every domain on this host, at start-up (nova's _destroy_evacuated_instances).

- owned (per the domain's <metadata>), VM now on another node: destroyed and undefined here; disks
  removed only when the storage is not shared; never while the VM is marked as migrating;
- owned, VM not in this node's listing (node-scoped, README "Architecture"): GET by the namespace/name of
  the domain's metadata tells a VM on another node (above) from one that is gone (below); an API error
  leaves the domain alone;
- owned, VM gone: destroyed and undefined; disks kept unless --delete-orphan-disks; reported in the log
  and as an Event on the Node;
- not owned: never touched; counted in one log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from libvirt_operator.api.constants import MIGRATING_ANNOTATION
from libvirt_operator.context import HostParts
from libvirt_operator.hypervisor import domains
from libvirt_operator.hypervisor.domain_xml import Owner, parse_owner
from libvirt_operator.kube.client import KubeError
from libvirt_operator.pipeline.records import VMRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanResult:
    counts: Counter[str]
    decisions: list[tuple[str, str, str]]  # (domain, observed, action)


def _all_owners(conn: Any) -> list[tuple[str, str, Owner | None]]:
    """Blocking: (uuid, name, owner) of every domain on the host."""
    result = []
    for dom in conn.listAllDomains(0):
        try:
            owner = parse_owner(dom.XMLDesc(0))
        except Exception:  # a domain we cannot read is not ours to judge
            owner = None
        result.append((dom.UUIDString(), dom.name(), owner))
    return result


class HostReconciler:
    def __init__(self, parts: HostParts) -> None:
        self.parts = parts

    async def startup_scan(self, vms: Sequence[Mapping[str, Any]]) -> ScanResult:
        node = self.parts.settings.node_name
        by_uid = {str(vm["metadata"].get("uid")): vm for vm in vms}
        listing = await self.parts.conn.call("list domains", _all_owners)
        counts: Counter[str] = Counter()
        decisions: list[tuple[str, str, str]] = []
        shared = await asyncio.to_thread(self.parts.storage.is_shared, node, self.parts.settings.shared_storage)
        semaphore = asyncio.Semaphore(max(self.parts.settings.workers, 1))

        async def handle(uuid: str, name: str, owner: Owner | None) -> None:
            async with semaphore:
                if owner is None or owner.node != node:
                    # Another operator's (another node name on a shared libvirtd) is not ours either.
                    counts["unowned"] += 1
                    return
                vm = by_uid.get(owner.uid) if owner.uid == uuid else None
                if vm is None and owner.uid == uuid:
                    # Not in this node's listing: moved to another node, or gone. The API tells which.
                    try:
                        found = await self.parts.get_vm(owner.namespace, owner.name)
                    except KubeError as exc:
                        counts["unknown"] += 1
                        logger.warning("domain %s (VM %s/%s): cannot tell whether its VirtualMachine moved or "
                                       "is gone (%s): left alone until the next start", name, owner.namespace,
                                       owner.name, exc)
                        decisions.append((name, "unknown", "none"))
                        return
                    if found is not None and str(found.get("metadata", {}).get("uid")) == owner.uid:
                        vm = found
                if vm is None:
                    counts["orphan"] += 1
                    keep = not self.parts.settings.delete_orphan_disks
                    action = f"destroy and undefine, {'keep' if keep else 'remove'} disks"
                    logger.warning("domain %s (VM %s/%s, uid %s): its VirtualMachine no longer exists: %s",
                                   name, owner.namespace, owner.name, owner.uid, action)
                    await self.destroy_owned(uuid, undefine=True)
                    if not keep:
                        await asyncio.to_thread(self.parts.storage.remove_vm_dir, uuid)
                    await self._post_node_event("Warning", "OrphanDomainRemoved",
                                                  f"domain {name} belonged to VirtualMachine {owner.namespace}/"
                                                  f"{owner.name} which no longer exists: {action}")
                    decisions.append((name, "orphan", action))
                    return
                vm_node = (vm.get("spec") or {}).get("nodeName")
                if vm_node == node:
                    counts["owned"] += 1
                    return
                if MIGRATING_ANNOTATION in (vm["metadata"].get("annotations") or {}):
                    counts["migrating"] += 1
                    logger.info("domain %s: VM now on node %s but marked as migrating: left alone", name, vm_node)
                    decisions.append((name, f"on {vm_node}, migrating", "none"))
                    return
                counts["evacuated"] += 1
                action = f"destroy and undefine, {'keep disks (shared storage)' if shared else 'remove disks'}"
                logger.warning("domain %s: VM %s/%s now belongs to node %s: %s", name, owner.namespace,
                               owner.name, vm_node, action)
                await self.destroy_owned(uuid, undefine=True)
                if not shared:
                    await asyncio.to_thread(self.parts.storage.remove_vm_dir, uuid)
                decisions.append((name, f"on {vm_node}", action))

        await asyncio.gather(*(handle(*item) for item in listing))
        logger.info("start-up scan of %d domains on %s: %d owned here, %d evacuated, %d orphaned, %d migrating, "
                    "%d not ours (untouched)", len(listing), node, counts["owned"], counts["evacuated"],
                    counts["orphan"], counts["migrating"], counts["unowned"])
        return ScanResult(counts, decisions)

    async def destroy_owned(self, uuid: str, *, undefine: bool) -> bool:
        """Destroy (and undefine) a domain only after proving from its metadata that it is ours."""
        owner = await self.parts.conn.call("domain owner", lambda c: domains.owner_of(c, uuid))
        if owner is None or owner.uid != uuid or owner.node != self.parts.settings.node_name:
            logger.warning("domain %s is not owned by this operator: not touching it", uuid)
            return False
        record = self.parts.records.by_uid(uuid)
        if record is not None:
            record.expect("Shutdown", "Stopped", "Undefined")  # a destroy is reported as Shutdown, then Stopped
        await self.parts.conn.call("destroy", lambda c: domains.destroy(c, uuid))
        if undefine:
            await self.parts.conn.call("undefine", lambda c: domains.undefine(c, uuid))
        return True

    async def clean_moved_domain(self, rec: VMRecord) -> None:
        """A VM of ours got another nodeName while we run: same rule as at start-up."""
        if rec.body.get("metadata", {}).get("annotations", {}).get(MIGRATING_ANNOTATION) is not None:
            return
        exists = await self.parts.conn.call("domain state", lambda c: domains.state_of(c, rec.uid))
        if exists is None:
            return
        shared = await asyncio.to_thread(self.parts.storage.is_shared, self.parts.settings.node_name,
                                         self.parts.settings.shared_storage)
        logger.warning("%s/%s moved to node %s: removing its domain here (%s)", *rec.key, rec.node_name,
                       "disks kept: shared storage" if shared else "disks removed")
        if await self.destroy_owned(rec.uid, undefine=True) and not shared:
            await asyncio.to_thread(self.parts.storage.remove_vm_dir, rec.uid)

    async def _post_node_event(self, type_: str, reason: str, message: str) -> None:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.parts.settings.node_name, "namespace": "default",
                             "uid": self.parts.settings.node_name}}
        await self.parts.post_event(node, type_, reason, message)
