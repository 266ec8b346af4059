"""Live migration on the libvirt side: the definitions the target gets, and the blocking calls (run them
through ``Connection.call``, off the asyncio loop).

The target gets the domain with its owner metadata naming the target node (else the target's operator
would not take it for its own, and the source's would still) in both the live and the persistent
definition, and, for a block migration, the disk files on the target's storage. Everything else stays as
libvirt wrote it (``VIR_DOMAIN_XML_MIGRATABLE``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from libvirt_operator.api.constants import XML_NAMESPACE, XML_PREFIX
from libvirt_operator.api.migration import StorageMode
from libvirt_operator.api.spec import FILE_NAME as _FILE_NAME_PATTERN
from libvirt_operator.hypervisor.connection import HypervisorError
from libvirt_operator.hypervisor.domain_xml import parse_owner
from libvirt_operator.hypervisor.storage import QEMU_IMG, Storage, StorageError

logger = logging.getLogger(__name__)

_NS = f"{{{XML_NAMESPACE}}}"
FILE_NAME = re.compile(_FILE_NAME_PATTERN)
BASE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
              | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)


class MigrationJobError(HypervisorError):
    """libvirt's migration job failed while this operator's own connection to libvirtd is fine: the error
    may come from the peer-to-peer connection to the target (its libvirtd gone: an RPC error that must not be
    taken for the loss of ours)."""


class MigrationXMLError(ValueError):
    """The domain's definition is not one this operator can migrate (not ours, unreadable)."""


def migration_flags(mode: StorageMode) -> int:
    """Pure: the flags of ``virDomainMigrateToURI3`` for a storage mode.

    Shared storage also gets VIR_MIGRATE_UNSAFE: libvirt counts only network file systems and cluster
    file systems as shared and refuses the rest, while the operator knows its storage directory is shared
    from the other nodes' markers in it (storage.is_shared); both QEMUs never write the disks at once
    (the source's stops before the target's resumes).
    """
    if mode == StorageMode.BLOCK:
        return int(BASE_FLAGS | libvirt.VIR_MIGRATE_NON_SHARED_DISK)
    if mode == StorageMode.SHARED:
        return int(BASE_FLAGS | libvirt.VIR_MIGRATE_UNSAFE)
    return int(BASE_FLAGS)


def retarget_xml(xml: str, *, uid: str, node: str, disk_files: Mapping[str, str] | None = None) -> str:
    """Pure: ``xml`` (a domain's definition) with its owner now ``node`` and, given ``disk_files`` (disk
    name -> file on the target), each owned disk moved to that file (its <source> and our <metadata>).

    Raises MigrationXMLError unless the definition is owned by this operator for ``uid``."""
    owner = parse_owner(xml)
    if owner is None or owner.uid != uid.lower():
        raise MigrationXMLError(f"domain {uid}: its definition carries no owner metadata of this operator")
    root = ET.fromstring(xml)
    metadata = root.find("metadata")
    instance = None if metadata is None else metadata.find(f"{_NS}instance")
    if metadata is None or instance is None:
        raise MigrationXMLError(f"domain {uid}: no owner metadata")
    owner_el = instance.find(f"{_NS}owner")
    assert owner_el is not None  # parse_owner found it
    owner_el.set("node", node)
    if disk_files:
        moved: dict[str, str] = {}
        for disk in instance.findall(f"{_NS}disks/{_NS}disk"):
            name, old = disk.get("name"), disk.get("path")
            if name is not None and name in disk_files and old:
                moved[old] = disk_files[name]
                disk.set("path", disk_files[name])
        missing = sorted(set(disk_files) - {d.get("name") for d in instance.findall(f"{_NS}disks/{_NS}disk")})
        if missing:
            raise MigrationXMLError(f"domain {uid}: no disk named {', '.join(missing)} in its metadata")
        for source in root.findall("./devices/disk/source"):
            old = source.get("file")
            if old in moved:
                source.set("file", moved[old])
    # Written back in the form libvirt's metadata API stores and domain_xml builds: prefixed names, the
    # namespace declared on <lvo:instance> itself (ElementTree would invent ns0 and hoist it to <domain>).
    index = list(metadata).index(instance)
    metadata.remove(instance)
    metadata.insert(index, _literal(instance, declare=True))
    return ET.tostring(root, encoding="unicode")


def _literal(element: ET.Element, *, declare: bool = False) -> ET.Element:
    tag = element.tag.replace(_NS, f"{XML_PREFIX}:") if element.tag.startswith(_NS) else element.tag
    attrs = dict(element.attrib)
    if declare:
        attrs[f"xmlns:{XML_PREFIX}"] = XML_NAMESPACE
    copy = ET.Element(tag, attrs)
    copy.text, copy.tail = element.text, element.tail
    for child in element:
        copy.append(_literal(child))
    return copy


@dataclass(frozen=True)
class Definitions:
    live: str  # for VIR_MIGRATE_PARAM_DEST_XML
    persistent: str  # for VIR_MIGRATE_PARAM_PERSIST_XML


def target_definitions(conn: libvirt.virConnect, uid: str, node: str,
                       disk_files: Mapping[str, str] | None = None) -> Definitions:
    """Blocking: the domain's live and persistent definitions, retargeted to ``node``."""
    dom = conn.lookupByUUIDString(uid)
    live = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE)
    persistent = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE
                             | libvirt.VIR_DOMAIN_XML_INACTIVE)
    return Definitions(retarget_xml(live, uid=uid, node=node, disk_files=disk_files),
                       retarget_xml(persistent, uid=uid, node=node, disk_files=disk_files))


COMPLETED_EVENT_WAIT = 5.0  # seconds the job-completed event may trail the migration call's return


def migrate(conn: libvirt.virConnect, uid: str, dest_uri: str, definitions: Definitions, flags: int, *,
            bandwidth_mib: int = 0) -> dict[str, Any]:
    """Blocking, for as long as the migration runs: a peer-to-peer live migration (this libvirtd connects
    to ``dest_uri`` itself, so the operator needs no connection to the target's libvirtd).

    Returns the completed job's statistics (downtime, data moved), from libvirt's job-completed event: with
    UNDEFINE_SOURCE the domain, and its completed-job statistics, are gone once the call returns. {} when the
    event did not come (the caller then has its last progress sample)."""
    dom = conn.lookupByUUIDString(uid)
    params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: definitions.live,
                              libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: definitions.persistent}
    if bandwidth_mib > 0:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth_mib
    completed: dict[str, Any] = {}
    arrived = threading.Event()

    def on_completed(_conn: Any, event_dom: Any, stats: dict[str, Any], _opaque: Any) -> None:
        # The native event thread: only hand the numbers over.
        if event_dom.UUIDString() == dom.UUIDString():
            completed.update(stats)
            arrived.set()

    callback = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_completed, None)
    try:
        try:
            dom.migrateToURI3(dest_uri, params, flags)
        except libvirt.libvirtError as exc:
            if _alive(conn):
                raise MigrationJobError(f"migrate: {exc.get_error_message() or exc}", exc.get_error_code(),
                                        domain=exc.get_error_domain(), detail=exc.get_error_message()) from exc
            raise  # our own link broke: Connection reports it and reconnects
        arrived.wait(COMPLETED_EVENT_WAIT)
    finally:
        try:
            conn.domainEventDeregisterAny(callback)
        except libvirt.libvirtError:
            pass
    return dict(completed)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        conn.getLibVersion()
    except libvirt.libvirtError:
        return False
    return True


def job_stats(conn: libvirt.virConnect, uid: str, *, completed: bool = False) -> dict[str, Any]:
    """Blocking: the running (or, ``completed``, the last finished) job's statistics; {} when none."""
    try:
        dom = conn.lookupByUUIDString(uid)
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            return {}
        raise
    return dict(stats) if isinstance(stats, dict) else {}


def job_active(conn: libvirt.virConnect, uid: str) -> bool:
    """Blocking: whether the domain has a job running (a migration libvirtd still drives)."""
    stats = job_stats(conn, uid)
    return int(stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE)) not in (libvirt.VIR_DOMAIN_JOB_NONE,
                                                                         libvirt.VIR_DOMAIN_JOB_COMPLETED,
                                                                         libvirt.VIR_DOMAIN_JOB_FAILED,
                                                                         libvirt.VIR_DOMAIN_JOB_CANCELLED)


def abort(conn: libvirt.virConnect, uid: str) -> bool:
    """Blocking: abort the domain's running job (the guest stays where it is). False: there was none."""
    try:
        conn.lookupByUUIDString(uid).abortJob()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            return False
        raise
    return True


def owned_disks(xml: str) -> dict[str, str]:
    """Pure: disk name -> file of the disks our metadata records for this definition ({} when not ours)."""
    root = ET.fromstring(xml)
    if parse_owner(xml) is None:
        return {}
    found: dict[str, str] = {}
    for disk in root.findall(f"metadata/{_NS}instance/{_NS}disks/{_NS}disk"):
        name, path = disk.get("name"), disk.get("path")
        if name and path:
            found[name] = path
    return found


def disk_sizes(conn: libvirt.virConnect, uid: str) -> dict[str, int]:
    """Blocking: disk name -> virtual size in bytes of the domain's own disks (libvirt reads them: no
    image lock to contend with while the guest runs)."""
    dom = conn.lookupByUUIDString(uid)
    return {name: int(dom.blockInfo(path)[0]) for name, path in owned_disks(dom.XMLDesc(0)).items()}


def create_target_disks(storage: Storage, uid: str, sizes: Mapping[str, int]) -> dict[str, str]:
    """Blocking: empty qcow2 files of the given virtual sizes under this node's storage directory, that a
    block migration then fills (libvirt needs them to exist on the target first). Idempotent: a disk file
    already there is kept (a retry after a restart). Returns disk name -> file.

    On failure (no space, say) what this call made is removed again, the directory too when it made it:
    a refused migration leaves nothing on the target."""
    vm_dir = storage.vm_dir(uid)
    try:
        vm_dir.mkdir()
        made_dir = True
    except FileExistsError:
        made_dir = False
    made: dict[str, str] = {}
    created: list[Path] = []
    try:
        for name, size in sorted(sizes.items()):
            if not FILE_NAME.fullmatch(name) or size <= 0:
                raise StorageError(None, f"disk {name!r} ({size} bytes) cannot be created for a migration")
            final = storage.disk_path(uid, name)
            if not final.exists():
                temp = final.with_name(f".{final.name}.migration.tmp")
                done = subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(temp), str(size)],
                                      capture_output=True, text=True, timeout=120, check=False,
                                      stdin=subprocess.DEVNULL, env=dict(os.environ, LC_ALL="C"))
                if done.returncode != 0:
                    temp.unlink(missing_ok=True)
                    raise StorageError(None, f"cannot create {final} for the migration: "
                                             f"{(done.stderr or done.stdout).strip()[-500:]}")
                os.replace(temp, final)
                created.append(final)
            made[name] = str(final)
    except BaseException:
        if made_dir:
            shutil.rmtree(vm_dir, ignore_errors=True)
        else:
            for path in created:
                path.unlink(missing_ok=True)
        raise
    return made
