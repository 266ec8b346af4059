"""Local mode (``libvirt-operator dev``): the API emulator, the CRD, a Node, and the operator, in one process.

The emulator is a local/test tool, not a Kubernetes API server for production (see docs/emulator.md).
pykube-ng applies the bootstrap objects (the Node, as a kubelet would register it) through the same HTTP
API every other client uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import platform
import signal
from pathlib import Path
from typing import Any

import libvirt

from libvirt_operator import __version__
from libvirt_operator.api.constants import CRD_PATH
from libvirt_operator.settings import Settings

logger = logging.getLogger(__name__)


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


async def run_dev(settings: Settings, *, kubeconfig: Path, api_only: bool, port: int = 0,
                  libvirt_uri_given: bool = False) -> None:
    from libvirt_operator.emulator import KubeEmulator

    async with KubeEmulator(port=port, crd_paths=[CRD_PATH]) as emulator:
        if not api_only:
            # Bootstrap through a private kubeconfig: FILE appears only once the Node is there too.
            bootstrap = kubeconfig.with_name(f".{kubeconfig.name}.bootstrap")
            await asyncio.to_thread(emulator.write_kubeconfig, bootstrap)
            try:
                await asyncio.to_thread(register_node, bootstrap, settings.node_name)
            finally:
                bootstrap.unlink(missing_ok=True)
        await asyncio.to_thread(emulator.write_kubeconfig, kubeconfig)
        logger.info("Kubernetes API emulator at %s; kubeconfig written to %s", emulator.url, kubeconfig)
        if api_only:
            await _wait_for_signal()
            return
        uri = settings.libvirt_uri
        if not libvirt_uri_given and not await asyncio.to_thread(libvirt_answers, uri):
            logger.warning("no libvirtd answers at %s: using test:///default (an in-memory hypervisor)", uri)
            uri = "test:///default"
        from libvirt_operator.operator_main import run_operator

        await run_operator(dataclasses.replace(settings, kubeconfig=str(kubeconfig), libvirt_uri=uri),
                           health_host="127.0.0.1")


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("signal received: stopping the API emulator")
