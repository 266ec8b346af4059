"""Running the operator process: API client, runtime, health endpoints, then kopf until a signal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import kopf

from libvirt_operator.handlers.registration import build_registry
from libvirt_operator.health import HealthServer
from libvirt_operator.kube.client import KubeClient, load_api_client
from libvirt_operator.runtime import Runtime
from libvirt_operator.settings import Settings

logger = logging.getLogger(__name__)


async def run_operator(settings: Settings, *, stop_flag: asyncio.Event | None = None,
                       health_host: str = "0.0.0.0",
                       on_runtime: Callable[[Runtime], None] | None = None) -> int:
    """Runs until a signal or ``stop_flag``; returns the process exit code (1 when the node lease was lost)."""
    kube = KubeClient(load_api_client(settings.kubeconfig), workers=max(4, settings.workers // 2))
    runtime = Runtime(settings, kube)
    stop = stop_flag if stop_flag is not None else asyncio.Event()
    runtime.on_fatal = stop.set
    if on_runtime is not None:
        on_runtime(runtime)
    health = HealthServer(host=health_host, health_port=settings.health_port, metrics_port=settings.metrics_port,
                          metrics=runtime.metrics, ready=runtime.readiness)
    await health.start()
    logger.info("libvirt-operator for node %s, libvirt %s", settings.node_name, settings.libvirt_uri)
    try:
        await kopf.operator(
            registry=build_registry(settings.kubeconfig),
            memo=kopf.Memo(runtime=runtime),
            standalone=True,
            clusterwide=settings.namespace is None,
            namespaces=[settings.namespace] if settings.namespace else [],
            stop_flag=stop,
        )
    finally:
        await health.stop()
        kube.close()
    return 1 if runtime.lease_lost else 0
