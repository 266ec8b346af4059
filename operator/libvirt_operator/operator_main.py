"""Running the operator process: API client, runtime, health endpoints, then kopf until a signal.

kopf stops the whole operator when its watch stream (VirtualMachineMigrations; the VM watch is the runtime's
own, kube/vm_watch.py) fails on an API answer it does not retry (an HTTP 410 Gone or a 4xx to the watch
request itself; it handles 410 only as an in-stream event). One such answer from the API server or a proxy
would then end every node's operator at once. Here kopf is run again instead, in the same process, with a
fresh runtime that redoes the start-up reconciliation (the same as a pod restart, without losing the
process); the backoff doubles up to a minute.

SIGTERM and SIGINT set the operator's own stop flag: kopf is run as its two public halves (spawn_tasks,
which installs kopf's signal handlers, then run_tasks) and ours replace kopf's in between. kopf's handlers
would stop it too, but kopf then waits 5 s for its task that watches the stop flag, which never completes
(kopf 1.45): every pod termination took 5.2 s where the work takes 50 ms.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
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
    # One connection per worker (every worker can have its status patch in flight at once), and the VM
    # watch's, which holds one for as long as it runs.
    kube = KubeClient(await load_api_client(settings.kubeconfig, connections=settings.workers + 1))
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
            migrations = await kube.may_watch_migrations(settings.namespace)
            if not migrations:
                logger.warning("VirtualMachineMigrations cannot be listed (no CRD, or RBAC without them): live "
                               "migration is off until the operator restarts")
            try:
                existing = asyncio.all_tasks()  # what kopf.operator() tells run_tasks to leave alone
                tasks = await kopf.spawn_tasks(
                    registry=build_registry(settings.kubeconfig, watch_timeout=settings.watch_timeout,
                                            migrations=migrations),
                    memo=kopf.Memo(runtime=runtime),
                    standalone=True,
                    clusterwide=settings.namespace is None,
                    namespaces=[settings.namespace] if settings.namespace else [],
                    stop_flag=stop,
                )
                _stop_on_signals(stop)
                await kopf.run_tasks(tasks, ignored=existing)
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
        await kube.close()


def _stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT set ``stop`` (replacing kopf's handlers, which spawn_tasks has just installed)."""
    if threading.current_thread() is not threading.main_thread():
        return  # in-process use (benchmarks, tests): signals are the host program's business
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        logger.info("received %s: stopping", sig.name)
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True
