"""Local mode (``libvirt-operator dev``): the API emulator, the CRD, a Node, and the operator.

The emulator (``python -m kube_emulator``) is a local/test tool of its own, not a Kubernetes API server for
production (see docs/emulator.md); local mode starts it as a child process and never imports it.
pykube-ng applies the bootstrap objects (the Node, as a kubelet would register it) through the same HTTP
API every other client uses.

The emulator keeps its objects in a state file (``<state dir>/<node>/api-state.json``): a restarted local
mode finds its VirtualMachines again, so the operator adopts their running guests instead of destroying
them as orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import platform
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import libvirt
import yaml

from libvirt_operator import __version__
from libvirt_operator.api.constants import CRD_PATH, GROUP, KIND, MIGRATION_CRD_PATH, PLURAL, VERSION
from libvirt_operator.api.spec import DNS1123_SUBDOMAIN
from libvirt_operator.kube.lease import LeaseConfig, parse_micro_time
from libvirt_operator.settings import Settings, _state_dir

logger = logging.getLogger(__name__)
STATE_FILE_NAME = "api-state.json"
EMULATOR_START_TIMEOUT = 30.0


def node_state_dir(node_name: str) -> Path:
    """Local mode's own directory for one node: two local modes with different --node-name share nothing."""
    if len(node_name) > 253 or not re.fullmatch(DNS1123_SUBDOMAIN, node_name):
        raise ValueError(f"node name {node_name!r} is not a DNS-1123 subdomain")
    return _state_dir() / node_name


def node_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64" if platform.machine() == "x86_64" else platform.machine(),
                       "virt.libvirt-operator.dev/hypervisor": "true"},
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "registered by libvirt-operator dev (no kubelet runs here)"}],
            "nodeInfo": {"kubeletVersion": f"libvirt-operator-dev-{__version__}",
                         "architecture": platform.machine(), "operatingSystem": "linux"},
        },
    }


def register_node(kubeconfig: Path, name: str) -> None:
    """Blocking (pykube-ng): create the Node if it does not exist yet."""
    import pykube

    api = pykube.HTTPClient(pykube.KubeConfig.from_file(str(kubeconfig)))
    node = pykube.Node(api, node_manifest(name))
    if not node.exists():
        node.create()
        logger.info("registered node %s", name)


def cluster_identity(kubeconfig: Path) -> str:
    """Blocking: the uid of namespace kube-system, which lives as long as its API's objects do (with the
    state file, across restarts), so that shared-storage detection can tell another API's nodes apart."""
    import pykube

    api = pykube.HTTPClient(pykube.KubeConfig.from_file(str(kubeconfig)))
    return str(pykube.Namespace.objects(api).get(name="kube-system").obj["metadata"]["uid"])


class ForeignNodeWatcher:
    """A hint that local mode gives and the operator does not: every VirtualMachine whose spec.nodeName
    is not this node, and whose node has no operator holding its Lease, gets one Warning Event
    ``NoOperatorForNode`` (the examples say ``nodeName: dev-node``; with ``--node-name`` nothing would
    happen to them, and nothing would say why). Once per VM: an Event already there is not repeated,
    also after a restart. Only in local mode: on a cluster, other nodes' operators are elsewhere."""

    REASON = "NoOperatorForNode"

    def __init__(self, kubeconfig: Path, node_name: str, *, retry_every: float = 2.0) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        self.server = str(config["clusters"][0]["cluster"]["server"]).rstrip("/")
        token = (config["users"][0].get("user") or {}).get("token")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.node_name = node_name
        self.retry_every = retry_every
        self._seen: set[str] = set()  # uids judged already

    async def run(self) -> None:
        """Until cancelled: list, then watch from the list's resourceVersion; list again after any failure."""
        path = f"{self.server}/apis/{GROUP}/{VERSION}/{PLURAL}"
        async with aiohttp.ClientSession(headers=self.headers) as session:
            while True:
                try:
                    async with session.get(path) as rsp:
                        rsp.raise_for_status()
                        listed = await rsp.json()
                    for vm in listed.get("items") or ():
                        await self._judge(session, vm)
                    params = {"watch": "1", "resourceVersion": listed["metadata"]["resourceVersion"],
                              "allowWatchBookmarks": "true"}
                    async with session.get(path, params=params, timeout=aiohttp.ClientTimeout()) as rsp:
                        rsp.raise_for_status()
                        async for line in rsp.content:
                            event = json.loads(line) if line.strip() else {}
                            if event.get("type") in ("ADDED", "MODIFIED"):
                                await self._judge(session, event["object"])
                            elif event.get("type") == "ERROR":
                                break  # e.g. 410 Expired: list again
                except (aiohttp.ClientError, ValueError, KeyError) as exc:
                    logger.debug("watching VirtualMachines for foreign nodes: %s; again in %.0fs", exc,
                                 self.retry_every)
                await asyncio.sleep(self.retry_every)

    async def _judge(self, session: aiohttp.ClientSession, vm: dict[str, Any]) -> None:
        meta = vm.get("metadata") or {}
        uid, node = meta.get("uid"), (vm.get("spec") or {}).get("nodeName")
        if not uid or not node or node == self.node_name or uid in self._seen or meta.get("deletionTimestamp"):
            return
        if await self._node_has_operator(session, node):
            return  # another `libvirt-operator run` acts for it; judged again at the VM's next change
        namespace = meta.get("namespace") or "default"
        events = f"{self.server}/api/v1/namespaces/{namespace}/events"
        async with session.get(events, params={"fieldSelector": f"involvedObject.uid={uid},"
                                                                 f"reason={self.REASON}"}) as rsp:
            rsp.raise_for_status()
            posted = bool((await rsp.json()).get("items"))
        if not posted:
            message = (f"spec.nodeName is {node!r}, but no operator runs for that node: local mode runs the "
                       f"operator for node {self.node_name!r} only. Set spec.nodeName: {self.node_name} (or "
                       f"run `libvirt-operator run --node-name {node}` against this API)")
            async with session.post(events, json=_event(vm, "Warning", self.REASON, message)) as rsp:
                rsp.raise_for_status()
            logger.warning("VirtualMachine %s/%s: %s", namespace, meta.get("name"), message)
        self._seen.add(uid)

    async def _node_has_operator(self, session: aiohttp.ClientSession, node: str) -> bool:
        """Whether an operator holds the node's Lease (what every operator takes before it acts)."""
        lease = LeaseConfig.for_node(node, identity="local-mode")
        url = f"{self.server}/apis/coordination.k8s.io/v1/namespaces/{lease.namespace}/leases/{lease.name}"
        async with session.get(url) as rsp:
            if rsp.status == 404:
                return False
            rsp.raise_for_status()
            spec = (await rsp.json()).get("spec") or {}
        renewed = parse_micro_time(spec.get("renewTime"))
        if not spec.get("holderIdentity") or renewed is None:
            return False
        expires = renewed + datetime.timedelta(seconds=float(spec.get("leaseDurationSeconds") or 0))
        return expires > datetime.datetime.now(datetime.UTC)


def _event(vm: dict[str, Any], type_: str, reason: str, message: str) -> dict[str, Any]:
    meta = vm["metadata"]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace") or "default"},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"],
                           "namespace": meta.get("namespace"), "uid": meta["uid"],
                           "resourceVersion": meta.get("resourceVersion")},
        "type": type_, "reason": reason, "message": message,
        "source": {"component": "libvirt-operator-dev"}, "reportingComponent": "libvirt-operator-dev",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }


def libvirt_answers(uri: str) -> bool:
    """Blocking: whether a libvirtd answers at ``uri`` (local mode falls back to test:///default)."""
    try:
        conn = libvirt.openAuth(uri, [[libvirt.VIR_CRED_AUTHNAME], lambda creds, opaque: 0, None], 0)
    except libvirt.libvirtError:
        return False
    try:
        conn.getLibVersion()
        return True
    except libvirt.libvirtError:
        return False
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


class EmulatorProcess:
    """``python -m kube_emulator`` as a child process; its kubeconfig is the sign that it answers."""

    def __init__(self, kubeconfig: Path, port: int, state_file: Path | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.port = port
        self.state_file = state_file
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.kubeconfig.unlink(missing_ok=True)
        state = ["--state-file", str(self.state_file)] if self.state_file is not None else []
        # A session of its own: Ctrl-C in the terminal reaches only local mode, which stops the operator
        # first (it releases its Lease) and the emulator last, so that the state file has the final word.
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kube_emulator", "--kubeconfig", str(self.kubeconfig), "--port", str(self.port),
            "--crd", str(CRD_PATH), "--crd", str(MIGRATION_CRD_PATH), *state, start_new_session=True)
        try:
            async with asyncio.timeout(EMULATOR_START_TIMEOUT):
                while not self.kubeconfig.exists():
                    if self.proc.returncode is not None:
                        raise RuntimeError(f"the API emulator exited with {self.proc.returncode} before answering")
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise RuntimeError(f"the API emulator did not write {self.kubeconfig} within "
                               f"{EMULATOR_START_TIMEOUT:.0f} s") from None

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def set_aside(state_file: Path) -> Path | None:
    """``--fresh``: keep the previous state next to the file (one generation) rather than delete it."""
    if not state_file.exists():
        return None
    previous = state_file.with_name(state_file.name + ".previous")
    state_file.replace(previous)
    return previous


async def run_dev(settings: Settings, *, kubeconfig: Path, api_only: bool, port: int = 0,
                  libvirt_uri_given: bool = False, state_file: Path | None = None, fresh: bool = False) -> None:
    if state_file is not None and fresh:
        previous = set_aside(state_file)
        if previous is not None:
            logger.warning("--fresh: starting with an empty API; the previous state is kept in %s", previous)
    # The emulator writes a private kubeconfig: FILE appears only once the Node is there too.
    private = kubeconfig.with_name(f".{kubeconfig.name}.emulator")
    emulator = EmulatorProcess(private, port, state_file)
    await emulator.start()
    hints: asyncio.Task[None] | None = None
    try:
        if not api_only:
            await asyncio.to_thread(register_node, private, settings.node_name)
        await asyncio.to_thread(_publish_kubeconfig, private, kubeconfig)
        logger.info("Kubernetes API emulator (pid %s); kubeconfig written to %s",
                    emulator.proc.pid if emulator.proc else "?", kubeconfig)
        if state_file is not None:
            logger.info("API objects are kept in %s across restarts (--fresh starts empty)", state_file)
        else:
            logger.info("API objects are not kept: they go with this process (no --state-file)")
        if api_only:
            await _wait_for_signal()
            return
        uri = settings.libvirt_uri
        if not libvirt_uri_given and not await asyncio.to_thread(libvirt_answers, uri):
            logger.warning("no libvirtd answers at %s: using test:///default (an in-memory hypervisor)", uri)
            uri = "test:///default"
        from libvirt_operator.operator_main import run_operator
        from libvirt_operator.runtime import Runtime

        cluster = await asyncio.to_thread(cluster_identity, private)

        def identify(runtime: Runtime) -> None:  # before its start-up, which leaves the node's marker
            runtime.storage.cluster = cluster

        announce_directories(settings)
        hints = asyncio.create_task(ForeignNodeWatcher(private, settings.node_name).run(), name="foreign-nodes")
        await run_operator(dataclasses.replace(settings, kubeconfig=str(kubeconfig), libvirt_uri=uri),
                           health_host="127.0.0.1", on_runtime=identify)
    finally:
        if hints is not None:
            hints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hints
        await emulator.stop()


def announce_directories(settings: Settings) -> None:
    """Where to put base images and where disks go: the README quotes these lines."""
    logger.info("base images (spec.disks[].image) are looked up in %s", settings.image_dir)
    logger.info("VM disks are created in %s", settings.storage_dir)
    legacy = _state_dir() / "images"
    if legacy.is_dir() and legacy != settings.image_dir and any(legacy.iterdir()):
        logger.warning("%s, the image directory of earlier versions of local mode, is not used any more: "
                       "move its images to %s", legacy, settings.image_dir)


def _publish_kubeconfig(private: Path, public: Path) -> None:
    """Blocking: copy atomically, so a reader never sees half a kubeconfig."""
    tmp = public.with_name(f".{public.name}.tmp")
    tmp.write_bytes(private.read_bytes())
    tmp.chmod(0o600)
    tmp.replace(public)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("signal received: stopping the API emulator")
