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
import logging
import platform
import re
import signal
import sys
from pathlib import Path
from typing import Any

import libvirt

from libvirt_operator import __version__
from libvirt_operator.api.constants import CRD_PATH
from libvirt_operator.api.spec import DNS1123_SUBDOMAIN
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
            "--crd", str(CRD_PATH), *state, start_new_session=True)
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

        await run_operator(dataclasses.replace(settings, kubeconfig=str(kubeconfig), libvirt_uri=uri),
                           health_host="127.0.0.1", on_runtime=identify)
    finally:
        await emulator.stop()


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
