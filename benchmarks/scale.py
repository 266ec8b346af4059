"""Scale on test:///default, in this process: many VMs, the event burst, then a restart of the operator.

1. the first operator instance creates ``count`` VMs (domains defined and started by the operator itself);
2. the event burst over all of them (events.py), then the same at a paced rate;
3. the first instance stops; the API server's raw status-patch throughput on the same VMs (raw_patches.py);
4. a second instance starts in the same process and finds ``count`` owned domains: start-up
   reconciliation is the time from starting it to ready (every VM reconciled once);
5. more rounds of 2 (the burst only) and 3, each with an instance of its own started like the second:
   ``rounds`` pairs of (burst, raw) in all. The burst's drain over the raw rate moved by 10-20 % between
   single pairs on an idle 2-core machine (the API server's CPU per patch varies that much from one
   10-second stretch to the next, in both halves alike), so the suite reports the median pair.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from benchmarks.apis import ApiChoice, process_env
from benchmarks.common import create_vms, scratch_dir, vm_writes, wait_until
from benchmarks.events import EventResult, burst
from benchmarks.inprocess import OperatorThread, open_test_driver, remove_test_domains, test_settings
from benchmarks.raw_patches import RawPatchResult
from benchmarks.raw_patches import run as raw_patches
from testbed import vm_manifest

ROUNDS = 3  # (burst, raw) pairs; odd, so that the median is one of them


@dataclass
class ScaleResult:
    vms: int
    create_to_all_running_s: float
    writes_per_create: float
    burst: EventResult
    paced: EventResult | None
    startup_s: float  # second instance: thread start to ready
    startup_runtime_s: float  # the same as the runtime measures it (its start-up sequence only)
    startup_domains: int
    startup_writes: int
    loop_lag_max_s: dict[str, float]
    raw_patches: RawPatchResult  # the API server alone, same VMs, connections and payload size as the burst's
    burst_patch_bytes: float | None  # real API: the mean body of the VM patches it received during the burst
    rounds: list[tuple[EventResult, RawPatchResult]]  # every (burst, raw) pair, the first one's above included

    def drain_over_raw(self) -> list[float]:
        """Each pair's burst drain over its raw rate, in round order."""
        return [b.drained / b.drain_s / r.per_s for b, r in self.rounds]


def run(count: int, apis: ApiChoice, *, paced_interval: float | None = None, timeout: float = 900.0,
        rounds: int = ROUNDS) -> ScaleResult:
    node = f"bench{uuid.uuid4().hex[:6]}"
    with scratch_dir("lvo-bench-scale-") as base, apis.phase(base, node) as api, process_env(api.api.operator_env()):
        settings = test_settings(node, api.kubeconfig, base)
        first = OperatorThread(settings)
        instances = [first]
        first.start()
        conn = open_test_driver()
        try:
            wait_until(lambda: first.ready, timeout=60, what="the first operator instance to be ready")
            api.reset_counts()
            started = time.monotonic()
            manifests = [vm_manifest(f"{node}-{i:04d}", node, memory="32Mi", namespace=api.namespace)
                         for i in range(count)]
            names = [str(m["metadata"]["name"]) for m in manifests]
            uids = asyncio.run(create_vms(api.admin, manifests))
            try:
                wait_until(lambda: first.phases()["Running"] == count, timeout=timeout, interval=0.2,
                           what=f"{count} VMs Running on test:///default")
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; phases: {dict(first.phases())}") from None
            create_s = time.monotonic() - started
            first.wait_idle()
            writes_per_create = vm_writes(api.requests()) / count

            bytes_before = api.request_bytes("patch")
            burst_result = burst(first, api, conn, uids)
            bytes_after = api.request_bytes("patch")
            paced = burst(first, api, conn, uids, interval=paced_interval) if paced_interval else None
            lag = {"scale_first_instance": first.loop_lag_max()}
            first.stop()
            # With the operator stopped, so that it neither reacts to these patches nor shares the process.
            raw = raw_patches(api, names, concurrency=settings.workers)
            pairs = [(burst_result, raw)]

            owned = sum(1 for dom in conn.listAllDomains(0) if dom.name() != "test")
            api.reset_counts()
            second = OperatorThread(settings)
            instances.append(second)
            second.start()
            wait_until(lambda: second.ready, timeout=timeout, interval=0.005,
                       what="the second operator instance to be ready")
            startup_s = time.monotonic() - second.started_at
            runtime = second.runtime
            assert runtime is not None
            # Ready turns true with the last first pass; the runtime notes its time a few loop turns later.
            startup_runtime_s = wait_until(lambda: runtime.startup_seconds, timeout=10, interval=0.005,
                                           what="the runtime's own start-up time")
            second.wait_idle()
            startup_writes = vm_writes(api.requests())
            lag["scale_second_instance"] = second.loop_lag_max()

            instance = second
            for round_ in range(2, rounds + 1):
                if round_ > 2:
                    instance = OperatorThread(settings)
                    instances.append(instance)
                    instance.start()
                    wait_until(lambda: instance.ready, timeout=timeout, interval=0.05,  # noqa: B023
                               what=f"operator instance {round_} to be ready")
                    instance.wait_idle()
                round_burst = burst(instance, api, conn, uids)
                instance.stop()
                pairs.append((round_burst, raw_patches(api, names, concurrency=settings.workers)))
            return ScaleResult(count, create_s, writes_per_create, burst_result, paced, startup_s, startup_runtime_s,
                               owned, startup_writes, lag, raw, mean_request_bytes(bytes_before, bytes_after), pairs)
        finally:
            for instance in instances:
                try:
                    instance.stop()
                except RuntimeError as exc:
                    print(f"warning: {exc}")
            remove_test_domains(conn)
            conn.close()


def mean_request_bytes(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """The mean body size of the requests between two (sum, count) readings; None without two readings or
    without a request between them."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
