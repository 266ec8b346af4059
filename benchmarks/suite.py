"""`benchmarks/run`: every scenario in turn, then the JSON, the plot and the summary.

1. creation.py: real QEMU guests created 100 ms apart (processes, qemu:///system);
2. scale.py: many VMs on test:///default in this process: the event burst (events.py), then start-up
   reconciliation by a second operator instance;
3. memory.py: the operator as its own process on test:///default with many VMs, idle: its RSS;
4. foreign.py: the same process with VMs of its node, then also many VMs of other nodes under status churn:
   its CPU and RSS with them over without them;
5. migration.py: a 512 MiB guest live-migrated back and forth between two hypervisor hosts in namespaces of
   their own, through the operator and by plain `virsh migrate` in turn (real API and root only; skipped
   otherwise, `--migrations 0` skips it too).

Every scenario talks to the API `--api` names (apis.py): the real control plane of hack/cluster.sh (started
if it is not running; request counts from its audit log, the operator's user only), or the project's API
emulator (its own counts). Each scenario starts from an empty namespace.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import libvirt

from benchmarks import creation, foreign, memory, migration, report, scale
from benchmarks.apis import KINDS, ApiChoice
from benchmarks.common import REPO, ensure_libvirtd, percentile

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "latest.json"


@dataclass(frozen=True)
class Sizes:
    created: int  # real QEMU guests
    scale: int  # VMs on test:///default for the event burst and the start-up
    rss: int  # VMs held by the operator process whose memory is read
    foreign: int  # VMs of other nodes beside the foreign run's operator
    foreign_own: int  # VMs of its own node
    # Each phase of the foreign run: long enough for its periodic work (Lease renewal every 5 s, Node
    # heartbeat, gauges every 5 s) to come round several times alike in both, and for CPU ticks of 10 ms
    # to be fine against its idle use (about 1% of a core: 0.2 s in 20 s).
    foreign_seconds: float
    migrations: int  # live migrations each way, through the operator and by virsh alike (0: none)
    paced_interval: float = 0.005  # seconds between calls of the paced event run (200 events/s)
    churn_per_s: float = 200.0  # status changes per second on the foreign VMs


FULL = Sizes(created=100, scale=1000, rss=1000, foreign=10000, foreign_own=100, foreign_seconds=60.0, migrations=3)
QUICK = Sizes(created=10, scale=200, rss=200, foreign=1000, foreign_own=20, foreign_seconds=20.0, migrations=1)
SIZE_FLAGS = ("created", "scale", "rss", "foreign", "foreign_own", "foreign_seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"reduced sizes ({QUICK.created} guests, {QUICK.scale} VMs): a few minutes")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="JSON results file; the plot goes next to it as .png (default: %(default)s)")
    parser.add_argument("--api", choices=KINDS, default=os.environ.get("LVO_API", "real"),
                        help="the real control plane of hack/cluster.sh, or the project's API emulator "
                             "(default: $LVO_API, else real)")
    parser.add_argument("--own-cluster", action="store_true",
                        help="--api real on a control plane of the run's own (.local/cluster-bench, port 16444), "
                             "not the one tests share: no test stops or loads it mid-run")
    for field, what in (("created", "real QEMU guests"), ("scale", "VMs of the event burst and the start-up"),
                        ("rss", "VMs of the memory run"), ("foreign", "other nodes' VMs of the foreign run"),
                        ("foreign-own", "own VMs of the foreign run")):
        parser.add_argument(f"--{field}", type=int, metavar="N", help=f"override the number of {what}")
    parser.add_argument("--foreign-seconds", type=float, metavar="S",
                        help="override the length of each measured phase of the foreign run")
    parser.add_argument("--migrations", type=int, metavar="N",
                        help=f"live migrations each way of the migration run (default {FULL.migrations}, quick "
                             f"{QUICK.migrations}; 0 skips it; alone: python -m benchmarks.migration)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    sizes = replace(sizes, **{f: getattr(args, f) for f in SIZE_FLAGS if getattr(args, f)})
    if args.migrations is not None:
        sizes = replace(sizes, migrations=max(0, args.migrations))
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    # The in-process operator logs through the root logger: to a file, not over the summary.
    logging.basicConfig(filename=output.with_suffix(".log"), filemode="w", level=logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(threadName)s %(name)s: %(message)s")
    for noisy in ("kopf", "aiohttp.access", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    ensure_libvirtd()
    print(f"API: {args.api}: starting it" if args.api == "real" else "API: emulator", flush=True)
    apis = ApiChoice(args.api, own_cluster=args.own_cluster)
    try:
        return _run(args, sizes, output, apis)
    finally:
        apis.close()


def _run(args: argparse.Namespace, sizes: Sizes, output: Path, apis: ApiChoice) -> int:
    api_description = apis.describe()
    print(f"API: {api_description}", flush=True)
    began = time.monotonic()
    load_start = os.getloadavg()[0]
    if load_start > 1.0:
        print(f"warning: load average {load_start:.1f} before the run: other work disturbs the numbers", flush=True)
    print(f"[1/5] creation: {sizes.created} real QEMU guests, 100 ms apart", flush=True)
    created = creation.run(sizes.created, apis)
    print(f"[2/5] scale: {sizes.scale} VMs on test:///default: event burst, paced events, raw patches, restart",
          flush=True)
    scaled = scale.run(sizes.scale, apis, paced_interval=sizes.paced_interval)
    print(f"[3/5] memory: operator process with {sizes.rss} VMs", flush=True)
    mem = memory.run(sizes.rss, apis)
    print(f"[4/5] foreign: operator process with {sizes.foreign_own} VMs, then {sizes.foreign} of other nodes "
          f"churning at {sizes.churn_per_s:.0f}/s ({sizes.foreign_seconds:.0f} s each)", flush=True)
    far = foreign.run(sizes.foreign_own, sizes.foreign, apis, interval=sizes.foreign_seconds,
                      churn_per_s=sizes.churn_per_s)
    migrated: dict[str, float] = {}
    skip = "--migrations 0" if sizes.migrations <= 0 else migration.unavailable(apis)
    if skip is None:
        print(f"[5/5] migration: a {migration.GUEST_MIB} MiB guest live-migrated {sizes.migrations}x each way "
              "between two namespaced hosts, through the operator and by plain virsh migrate in turn", flush=True)
        migrated = migration.results(migration.run(sizes.migrations, apis))
    else:
        print(f"[5/5] migration: skipped ({skip})", flush=True)

    burst, paced, raw = scaled.burst, scaled.paced, scaled.raw_patches
    assert paced is not None
    # The drain against the raw rate: the median pair of the rounds (scale.py), by its own ratio.
    ratios = scaled.drain_over_raw()
    drained, raw_median = scaled.rounds[sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]]
    drain_per_s = drained.drained / drained.drain_s
    lags = {"creation": created.loop_lag_max_s, "memory": mem.loop_lag_max_s, "foreign": far.loop_lag_max_s,
            **scaled.loop_lag_max_s}
    ms = 1000.0
    results: dict[str, float] = {
        "creation_to_running_p50_s": percentile(created.latencies_s, 50),
        "creation_to_running_p95_s": percentile(created.latencies_s, 95),
        "creation_to_running_max_s": max(created.latencies_s),
        "started_to_running_seen_p50_s": percentile(created.started_to_seen_s, 50),
        "started_to_running_seen_p95_s": percentile(created.started_to_seen_s, 95),
        "raw_creation_p50_s": percentile(created.raw_latencies_s, 50),
        "raw_creation_p95_s": percentile(created.raw_latencies_s, 95),
        "vms_created": len(created.latencies_s),
        "event_to_status_p50_ms": percentile(burst.operator_s, 50) * ms,
        "event_to_status_p99_ms": percentile(burst.operator_s, 99) * ms,
        "raw_event_p50_ms": percentile(burst.raw_s, 50) * ms,
        "raw_event_p99_ms": percentile(burst.raw_s, 99) * ms,
        "event_to_status_over_raw_p99": percentile(burst.operator_s, 99) / percentile(burst.raw_s, 99),
        "vms_for_events": burst.vms,
        "events_in_burst": burst.events,
        "burst_seconds": burst.seconds,
        "paced_events_per_s": 1.0 / sizes.paced_interval,
        "paced_event_to_status_p50_ms": percentile(paced.operator_s, 50) * ms,
        "paced_event_to_status_p99_ms": percentile(paced.operator_s, 99) * ms,
        "paced_raw_event_p99_ms": percentile(paced.raw_s, 99) * ms,
        # Real API only: the API server's own time for the status patches (audit log), for telling its share apart.
        **({"api_server_patch_p50_ms": percentile(burst.server_s, 50) * ms,
            "api_server_patch_p99_ms": percentile(burst.server_s, 99) * ms,
            "paced_api_server_patch_p99_ms": percentile(paced.server_s, 99) * ms}
           if burst.server_s and paced.server_s else {}),
        "api_writes_per_vm_create": created.writes_per_vm,
        "api_writes_per_vm_create_test_driver": scaled.writes_per_create,
        "api_writes_per_event": (burst.writes + paced.writes) / (burst.events + paced.events),
        "startup_reconcile_s": scaled.startup_s,
        "startup_reconcile_runtime_s": scaled.startup_runtime_s,
        "startup_reconcile_domains": scaled.startup_domains,
        "startup_api_writes": scaled.startup_writes,
        "rss_mib": mem.rss_mib,
        "rss_vms": mem.vms,
        "rss_peak_mib": mem.peak_rss_mib,
        "rss_empty_mib": mem.empty_rss_mib,
        "operator_rss_mib_after_creation": created.operator_rss_mib,
        # The burst's drain against the API server alone (scale.py, raw_patches.py).
        "status_drain_per_s": drain_per_s,
        "status_drain_patches": drained.drained,
        "status_drain_s": drained.drain_s,
        "patch_throughput_raw_per_s": raw_median.per_s,
        "patch_throughput_raw_concurrency": raw.concurrency,
        "status_patch_bytes": raw.mean_bytes,
        **({"status_patch_bytes_operator": scaled.burst_patch_bytes} if scaled.burst_patch_bytes else {}),
        "status_drain_over_raw": drain_per_s / raw_median.per_s,
        "status_drain_over_raw_min": min(ratios),
        "status_drain_over_raw_max": max(ratios),
        "status_drain_rounds": len(ratios),
        # Per-node cost against cluster size (foreign.py).
        "foreign_rss_ratio": far.rss_ratio,
        "foreign_cpu_ratio": far.cpu_ratio,
        "foreign_rss_mib_without": far.rss_mib_without,
        "foreign_rss_mib_with": far.rss_mib_with,
        "foreign_cpu_s_without": far.cpu_s_without,
        "foreign_cpu_s_with": far.cpu_s_with,
        "foreign_interval_s": far.interval_s,
        "foreign_interval_s_with": far.interval_s_with,
        "foreign_vms": far.foreign_vms,
        "foreign_nodes": far.foreign_nodes,
        "foreign_own_vms": far.own_vms,
        "foreign_churn_per_s": far.churn_per_s,
        "foreign_churn_patches": far.churn_patches,
        "foreign_watch_events_other": far.watch_events_other,
        "foreign_watch_events": far.watch_events_total,
        "foreign_create_s": far.create_s,
        "foreign_create_operator_cpu_s": far.create_cpu_s,
        "foreign_delete_s": far.delete_s,
        # Live migration, operator vs plain virsh (migration.py); absent when the run could not migrate.
        **migrated,
        # Operator processes only: the in-process instances share the GIL with this driver (docs/benchmarks.md).
        "loop_lag_max_ms": max(lags["creation"], lags["memory"], lags["foreign"]) * ms,
        **{f"loop_lag_max_ms_{name}": value * ms for name, value in lags.items()},
        "cpu_count": os.cpu_count() or 0,
        "kvm": 1 if created.domain_type == "kvm" else 0,
        "duration_s": time.monotonic() - began,
        "load_average_1m_start": load_start,
        "load_average_1m_end": os.getloadavg()[0],
    }
    missing = [k for k in report.REQUIRED_KEYS if k not in results]
    assert not missing, missing
    # Every value a number, but which API it was measured on (a name, first).
    document: dict[str, str | float] = {"api": args.api, **{k: round(v, 6) for k, v in results.items()}}
    output.write_text(json.dumps(document, indent=2) + "\n")
    machine = describe_machine(created.domain_type)
    no_plot = report.plot(  # None, or why there is no plot
        output.with_suffix(".png"), creation_s=created.latencies_s, raw_creation_s=created.raw_latencies_s,
        burst_operator_ms=[v * ms for v in burst.operator_s], burst_raw_ms=[v * ms for v in burst.raw_s],
        paced_operator_ms=[v * ms for v in paced.operator_s], paced_raw_ms=[v * ms for v in paced.raw_s],
        title=f"libvirt-operator{' (quick)' if args.quick else ''}: {machine}; API: {api_description}")
    print()
    print(report.summary(results, machine, api_description))
    wrote = f"{output} and {output.with_suffix('.png')}" if no_plot is None else f"{output} (no plot: {no_plot})"
    print(f"\nwrote {wrote} in {results['duration_s']:.0f} s")
    return 0


def describe_machine(domain_type: str) -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = libvirt.getVersion()
    libvirt_version = f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}"
    try:
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.split("\n")[0].replace("QEMU emulator version ", "")
    except OSError:
        qemu = "?"
    accel = "KVM" if domain_type == "kvm" else "TCG" if domain_type == "qemu" else domain_type
    return (f"{os.cpu_count()} cores {model or platform.machine()}, {accel}, libvirt {libvirt_version}, "
            f"QEMU {qemu.split(' ')[0]}, Python {platform.python_version()}")


if __name__ == "__main__":
    sys.exit(main())
