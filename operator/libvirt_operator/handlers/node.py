"""Host readiness on the Node object: the LibvirtReady condition, the schedulable label, capabilities.

nova's ``_set_host_enabled`` rule carried over: the operator marks the node unschedulable while libvirt is
down and reverses only what it set itself (an annotation records that). An administrator's own
``virt.libvirt-operator.dev/schedulable=false`` is never overridden.
Node updates are coalesced: only the latest wanted state is sent, retried with backoff while the API
server does not answer.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import libvirt

from libvirt_operator.api.constants import (
    GROUP,
    MIGRATION_URI_ANNOTATION,
    NODE_CONDITION_TYPE,
    NODE_LABEL_OWNER_ANNOTATION,
    NODE_SCHEDULABLE_LABEL,
)
from libvirt_operator.api.status import now_iso
from libvirt_operator.hypervisor.connection import MIN_LIBVIRT_VERSION, HypervisorError
from libvirt_operator.kube.client import KubeClient, KubeError
from libvirt_operator.settings import Settings

logger = logging.getLogger(__name__)

OWNER_VALUE = "libvirt-operator"
SUPPORTED_VIRT_TYPES = ("kvm", "qemu")
TESTED_ARCHES = ("x86_64", "aarch64")


@dataclass(frozen=True)
class HostInfo:
    arch: str
    cpu_model: str
    cpu_vendor: str
    cpu_features: tuple[str, ...]
    virt_type: str
    libvirt_version: str
    hypervisor_version: str


def _version(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def read_host_info(conn: libvirt.virConnect, virt_type: str) -> HostInfo:
    """Blocking: capabilities, expanded baseline CPU features, versions (runs off the loop)."""
    lib_version = conn.getLibVersion()
    if lib_version < MIN_LIBVIRT_VERSION[0] * 1000000 + MIN_LIBVIRT_VERSION[1] * 1000 + MIN_LIBVIRT_VERSION[2]:
        raise HypervisorError(
            f"libvirt {_version(lib_version)} is older than the supported minimum "
            f"{'.'.join(map(str, MIN_LIBVIRT_VERSION))}")
    caps = ET.fromstring(conn.getCapabilities())
    arch = caps.findtext("./host/cpu/arch") or "unknown"
    model = caps.findtext("./host/cpu/model") or ""
    vendor = caps.findtext("./host/cpu/vendor") or ""
    features: tuple[str, ...] = ()
    cpu = caps.find("./host/cpu")
    if cpu is not None:
        try:
            baseline = conn.baselineCPU([ET.tostring(cpu, encoding="unicode")],
                                        libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES)
            root = ET.fromstring(baseline)
            model = root.findtext("model") or model
            features = tuple(sorted(f.get("name", "") for f in root.findall("feature")
                                    if f.get("policy", "require") == "require" and f.get("name")))
        except libvirt.libvirtError as exc:
            logger.info("baselineCPU not available (%s): publishing the host CPU model only", exc)
    try:
        hv_version = _version(conn.getVersion())
    except libvirt.libvirtError:
        hv_version = "unknown"
    return HostInfo(arch, model, vendor, features, virt_type, _version(lib_version), hv_version)


def quality_warnings(info: HostInfo) -> list[str]:
    """nova's _do_quality_warnings: say so when the host is outside what is tested."""
    warnings = []
    if info.virt_type not in SUPPORTED_VIRT_TYPES:
        warnings.append(f"virt type {info.virt_type!r} is not tested; supported: {', '.join(SUPPORTED_VIRT_TYPES)}")
    if info.arch not in TESTED_ARCHES:
        warnings.append(f"architecture {info.arch!r} is not tested; tested: {', '.join(TESTED_ARCHES)}")
    if info.virt_type == "qemu":
        # No usable /dev/kvm, or one that cannot run a real kernel (--domain-type auto: the Node says which)
        warnings.append("guests run under TCG emulation (domain type qemu), much slower than KVM")
    return warnings


def _label_value(value: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in value)[:63].strip("-_.")
    return cleaned or "unknown"


class NodeReporter:
    def __init__(self, settings: Settings, kube: KubeClient) -> None:
        self.settings = settings
        self.kube = kube
        self._wanted: tuple[bool, str] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.applied: tuple[bool, str] | None = None
        self.host_info: HostInfo | None = None
        self.note: str | None = None  # appended to the condition's message (e.g. the watch fallback)
        self._applied_note: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="node-reporter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def set_connected(self, connected: bool, reason: str) -> None:
        self._wanted = (connected, reason)
        self._wake.set()

    def set_note(self, note: str | None) -> None:
        """A remark the LibvirtReady condition's message carries from now on (written with the next update)."""
        self.note = note
        self._wake.set()

    async def publish_capabilities(self, info: HostInfo, *, domain_type_reason: str = "") -> None:
        self.host_info = info
        labels = {
            f"{GROUP}/arch": _label_value(info.arch),
            f"{GROUP}/virt-type": _label_value(info.virt_type),
            f"{GROUP}/cpu-model": _label_value(info.cpu_model),
        }
        annotations = {
            f"{GROUP}/cpu-features": ",".join(info.cpu_features),
            f"{GROUP}/cpu-vendor": info.cpu_vendor,
            f"{GROUP}/libvirt-version": info.libvirt_version,
            f"{GROUP}/hypervisor-version": info.hypervisor_version,
            # The domain type the guests get and why (--domain-type auto: KVM, or TCG and the reason).
            f"{GROUP}/domain-type": info.virt_type,
            f"{GROUP}/domain-type-reason": domain_type_reason,
        }
        if self.settings.migration_uri:  # where a source node's libvirtd sends a live migration
            annotations[MIGRATION_URI_ANNOTATION] = self.settings.migration_uri
        try:
            await self.kube.patch_node(self.settings.node_name,
                                          {"metadata": {"labels": labels, "annotations": annotations}})
        except KubeError as exc:
            logger.warning("could not publish host capabilities on node %s: %s", self.settings.node_name, exc)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            wanted, note = self._wanted, self.note
            if wanted is None or (wanted == self.applied and note == self._applied_note):
                continue
            try:
                await self._apply(*wanted, note)
                self.applied, self._applied_note = wanted, note
                delay = 0.2
            except KubeError as exc:
                logger.warning("could not update node %s (%s); retrying in %.1fs", self.settings.node_name,
                               exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                self._wake.set()

    async def _apply(self, connected: bool, reason: str, note: str | None = None) -> None:
        node_name = self.settings.node_name
        try:
            node = await self.kube.get_node(node_name)
        except KubeError as exc:
            if exc.not_found:
                logger.warning("node %s does not exist: cannot mark its readiness", node_name)
                return
            raise
        meta = node.get("metadata", {})
        labels: dict[str, Any] = meta.get("labels") or {}
        annotations: dict[str, Any] = meta.get("annotations") or {}
        label = labels.get(NODE_SCHEDULABLE_LABEL)
        set_by_us = annotations.get(NODE_LABEL_OWNER_ANNOTATION) == OWNER_VALUE
        meta_patch: dict[str, Any] = {}
        if connected:
            if label is None or (label == "false" and set_by_us):
                meta_patch = {"labels": {NODE_SCHEDULABLE_LABEL: "true"},
                              "annotations": {NODE_LABEL_OWNER_ANNOTATION: None}}
            elif label == "false":
                logger.info("node %s: schedulable=false was set by an administrator: not overriding", node_name)
        else:
            if label != "false":
                meta_patch = {"labels": {NODE_SCHEDULABLE_LABEL: "false"},
                              "annotations": {NODE_LABEL_OWNER_ANNOTATION: OWNER_VALUE}}
        if meta_patch:
            await self.kube.patch_node(node_name, {"metadata": meta_patch})
        condition = {
            "type": NODE_CONDITION_TYPE,
            "status": "True" if connected else "False",
            "reason": "LibvirtConnected" if connected else "LibvirtUnreachable",
            "message": (f"libvirt at {self.settings.libvirt_uri} answers" if connected
                        else f"libvirt at {self.settings.libvirt_uri}: {reason}"),
            "lastHeartbeatTime": now_iso(),
            "lastTransitionTime": now_iso(),
        }
        if note:
            condition["message"] = f"{condition['message']}; {note}"
        for existing in (node.get("status") or {}).get("conditions") or []:
            if existing.get("type") == NODE_CONDITION_TYPE and existing.get("status") == condition["status"]:
                condition["lastTransitionTime"] = existing.get("lastTransitionTime") or condition["lastTransitionTime"]
        await self.kube.patch_node_status(node_name, {"status": {"conditions": [condition]}})
        logger.info("node %s: %s=%s", node_name, NODE_CONDITION_TYPE, condition["status"])
