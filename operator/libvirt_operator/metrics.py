"""Prometheus metrics of one operator process (a registry of its own, so tests can run several)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter as PyCounter
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Raw event-lag observations kept besides the histogram: exact percentiles for benchmarks, bounded memory.
EVENT_LAG_SAMPLES = 20000


class SampledHistogram:
    """A Histogram that also keeps its latest raw observations (buckets are too coarse for a p99)."""

    def __init__(self, histogram: Histogram, keep: int) -> None:
        self.histogram = histogram
        self.samples: deque[float] = deque(maxlen=keep)

    def observe(self, value: float) -> None:
        self.histogram.observe(value)
        self.samples.append(value)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.event_lag = SampledHistogram(Histogram("libvirt_operator_event_to_status_seconds",
                                                    "libvirt lifecycle event received to status patched",
                                                    buckets=LAG_BUCKETS, registry=r), EVENT_LAG_SAMPLES)
        self.reconcile = Histogram("libvirt_operator_reconcile_seconds", "reconciliation duration by handler",
                                   ["handler"], buckets=LAG_BUCKETS, registry=r)
        self.api_requests = Counter("libvirt_operator_api_requests_total",
                                    "Kubernetes API requests made by the operator itself",
                                    ["verb", "resource", "outcome"], registry=r)
        self.libvirt_calls = Counter("libvirt_operator_libvirt_calls_total", "libvirt calls",
                                     ["operation", "outcome"], registry=r)
        self.vms = Gauge("libvirt_operator_vms", "VirtualMachines of this node by phase", ["phase"], registry=r)
        self.connected = Gauge("libvirt_operator_libvirt_connected", "1 while libvirt answers", registry=r)
        self.loop_lag = Histogram("libvirt_operator_event_loop_lag_seconds", "asyncio loop scheduling lag",
                                  buckets=LAG_BUCKETS, registry=r)
        self.loop_lag_max = Gauge("libvirt_operator_event_loop_lag_max_seconds",
                                  "longest asyncio loop lag seen", registry=r)
        self.restarts = Counter("libvirt_operator_restarts_total", "guests restarted by policy", registry=r)
        self.kopf_restarts = Counter("libvirt_operator_kopf_restarts_total",
                                     "kopf run again in-process after a watch failed on an API answer",
                                     registry=r)
        self.events = Counter("libvirt_operator_libvirt_events_total", "libvirt lifecycle events received",
                              ["type", "owned"], registry=r)
        # "this": a VM of this node (or one that just left it); "other": another node's, which a node-scoped
        # watch never delivers (only the client-side-filtering fallback does).
        self.vm_watch_events = Counter("libvirt_operator_vm_watch_events_total",
                                       "VirtualMachine watch events received, by type and whose VM",
                                       ["type", "node"], registry=r)
        self.vm_watch_relists = Counter("libvirt_operator_vm_watch_relists_total",
                                        "VirtualMachines listed again because the watch's resourceVersion "
                                        "expired (410 Gone)", ["reason"], registry=r)
        self.requests: PyCounter[tuple[str, str]] = PyCounter()

    def on_api_request(self, verb: str, resource: str, ok: bool) -> None:
        self.api_requests.labels(verb, resource, "ok" if ok else "error").inc()
        self.requests[(verb, resource)] += 1

    def on_libvirt_call(self, operation: str, ok: bool) -> None:
        self.libvirt_calls.labels(operation, "ok" if ok else "error").inc()

    def set_phases(self, phases: PyCounter[str]) -> None:
        for phase in ("Pending", "Provisioning", "Starting", "Running", "Paused", "Stopping", "Stopped",
                      "Failed", "Terminating"):
            self.vms.labels(phase).set(phases.get(phase, 0))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

    async def watch_loop_lag(self, interval: float = 0.1, collect: Callable[[], None] | None = None) -> None:
        """Measures how late the loop wakes up: a blocked loop shows as lag."""
        loop = asyncio.get_running_loop()
        worst = 0.0
        ticks = 0
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            lag = max(loop.time() - start - interval, 0.0)
            self.loop_lag.observe(lag)
            if lag > worst:
                worst = lag
                self.loop_lag_max.set(worst)
            ticks += 1
            if collect is not None and ticks % 50 == 0:  # gauges every ~5 s: cheap even with 1000s of VMs
                collect()


def monotonic() -> float:
    return time.monotonic()
