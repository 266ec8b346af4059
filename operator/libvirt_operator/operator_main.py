"""Running the operator process: API client, runtime, health endpoints, then kopf until a signal.

kopf stops the whole operator when one of its watch streams fails on an API answer it does not retry
(an HTTP 410 Gone or a 4xx to the watch request itself; it handles 410 only as an in-stream event). One
such answer from the API server or a proxy would then end every node's operator at once. Here kopf is
run again instead, in the same process, with a fresh runtime that redoes the start-up reconciliation
(the same as a pod restart, without losing the process); the backoff doubles up to a minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import kopf
from kopf._cogs.clients.errors import APIError  # not exported by kopf; the type its API calls raise
from kopf._cogs.clients.watching import WatchingError

from libvirt_operator.handlers.registration import build_registry
from libvirt_operator.health import HealthServer
from libvirt_operator.kube.client import KubeClient, load_api_client
from libvirt_operator.metrics import Metrics
from libvirt_operator.runtime import Runtime
from libvirt_operator.settings import Settings

logger = logging.getLogger(__name__)

# What kopf raises when a watch stream fails on the API's answer: kopf is run again for these.
KOPF_API_FAILURES: tuple[type[BaseException], ...] = (APIError, WatchingError)
RESTART_BACKOFF = (1.0, 60.0)  # first and longest wait before kopf is run again
STABLE_RUN = 120.0  # a run this long resets the backoff


async def run_operator(settings: Settings, *, stop_flag: asyncio.Event | None = None,
                       health_host: str = "0.0.0.0",
                       on_runtime: Callable[[Runtime], None] | None = None) -> int:
    """Runs until a signal or ``stop_flag``; returns the process exit code (1 when the node lease was lost).

    ``on_runtime`` is called with each runtime: the first, and the fresh one of every kopf restart.
    """
    kube = KubeClient(load_api_client(settings.kubeconfig), workers=max(4, settings.workers // 2))
    metrics = Metrics()
    stop = stop_flag if stop_flag is not None else asyncio.Event()
    current: list[Runtime] = []

    def readiness() -> tuple[bool, str]:
        return current[-1].readiness() if current else (False, "starting")

    health = HealthServer(host=health_host, health_port=settings.health_port, metrics_port=settings.metrics_port,
                          metrics=metrics, ready=readiness)
    await health.start()
    logger.info("libvirt-operator for node %s, libvirt %s", settings.node_name, settings.libvirt_uri)
    backoff = RESTART_BACKOFF[0]
    try:
        while True:
            runtime = Runtime(settings, kube, metrics=metrics)
            runtime.on_fatal = stop.set
            current[:] = [runtime]
            if on_runtime is not None:
                on_runtime(runtime)
            began = time.monotonic()
            try:
                await kopf.operator(
                    registry=build_registry(settings.kubeconfig, watch_timeout=settings.watch_timeout),
                    memo=kopf.Memo(runtime=runtime),
                    standalone=True,
                    clusterwide=settings.namespace is None,
                    namespaces=[settings.namespace] if settings.namespace else [],
                    stop_flag=stop,
                )
                return 1 if runtime.lease_lost else 0
            except KOPF_API_FAILURES as exc:
                if stop.is_set() or runtime.lease_lost:
                    return 1 if runtime.lease_lost else 0
                if time.monotonic() - began > STABLE_RUN:
                    backoff = RESTART_BACKOFF[0]
                logger.error("kopf stopped on an API answer it does not retry (%s: %s); running it again "
                             "in %.0fs", type(exc).__name__, exc, backoff)
                metrics.kopf_restarts.inc()
                await runtime.stop()
            if await _stopped_within(stop, backoff):
                return 0
            backoff = min(backoff * 2, RESTART_BACKOFF[1])
    finally:
        await health.stop()
        kube.close()


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True
