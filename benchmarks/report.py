"""Targets, the human summary, and the plot of the latency distributions."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Every key the JSON must carry (the list); the suite writes more (see docs/benchmarks.md).
REQUIRED_KEYS = (
    "creation_to_running_p50_s", "creation_to_running_p95_s", "vms_created",
    "event_to_status_p50_ms", "event_to_status_p99_ms", "raw_event_p99_ms", "vms_for_events",
    "api_writes_per_vm_create", "api_writes_per_event",
    "startup_reconcile_s", "startup_reconcile_domains",
    "rss_mib", "rss_vms",
    "loop_lag_max_ms",
    # issue 15: per-node cost against cluster size, the status-write path against the API server's speed
    "foreign_rss_ratio", "foreign_cpu_ratio", "foreign_vms",
    "patch_throughput_raw_per_s", "status_drain_per_s", "status_drain_over_raw",
)


@dataclass(frozen=True)
class Target:
    key: str
    limit: float
    label: str
    size_key: str | None = None  # the size the target is stated for
    size: int = 0
    at_least: bool = False  # the limit is a floor, not a ceiling

    def met(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit


TARGETS = (
    Target("creation_to_running_p95_s", 2.0, "creation to Running p95 <= 2 s", "vms_created", 100),
    Target("event_to_status_p99_ms", 50.0, "event to status p99 <= 50 ms", "vms_for_events", 1000),
    Target("event_to_status_over_raw_p99", 20.0, "event to status p99 <= 20x raw libvirt p99", "vms_for_events",
           1000),
    Target("api_writes_per_vm_create", 3.0, "API writes per VM, create to Running <= 3"),
    Target("api_writes_per_event", 1.0, "API writes per lifecycle event <= 1"),
    Target("startup_reconcile_s", 10.0, "start-up reconciliation <= 10 s", "startup_reconcile_domains", 1000),
    Target("rss_mib", 150.0, "operator RSS <= 150 MiB", "rss_vms", 1000),
    Target("loop_lag_max_ms", 100.0, "asyncio loop never blocked > 100 ms"),
    Target("status_drain_over_raw", 0.8, "status drain >= 0.8x raw API patch rate", "vms_for_events",
           1000, at_least=True),
    Target("foreign_rss_ratio", 1.10, "RSS with foreign VMs <= 1.10x without", "foreign_vms", 10000),
    Target("foreign_cpu_ratio", 1.20, "CPU with foreign churn <= 1.20x without", "foreign_vms", 10000),
)


def summary(results: Mapping[str, float], machine: str, api: str) -> str:
    lines = [f"libvirt-operator benchmarks on {machine}", f"API: {api}", ""]
    if results.get("load_average_1m_start", 0.0) > 1.0:
        lines += [f"  NOTE: load average {results['load_average_1m_start']:.1f} at the start: the machine was busy",
                  ""]
    for t in TARGETS:
        value = results[t.key]
        verdict = "met" if t.met(value) else "MISSED"
        note = ""
        if t.size_key is not None and results[t.size_key] < t.size:
            note = f"  (measured at {int(results[t.size_key])}, the target is for {t.size})"
        lines.append(f"  {verdict:<6} {t.label:<46} measured {_fmt(value)}{note}")
    lines += [
        "",
        f"  creation to Running p50 {_fmt(results['creation_to_running_p50_s'])} s over "
        f"{int(results['vms_created'])} real guests ({'KVM' if results.get('kvm') else 'TCG'}); libvirt alone, "
        f"same shape: p50 {_fmt(results['raw_creation_p50_s'])} s, p95 {_fmt(results['raw_creation_p95_s'])} s",
        f"  event to status p50 {_fmt(results['event_to_status_p50_ms'])} ms, raw libvirt p99 "
        f"{_fmt(results['raw_event_p99_ms'])} ms (burst over {int(results['vms_for_events'])} VMs); paced at "
        f"{_fmt(results['paced_events_per_s'])}/s: p99 {_fmt(results['paced_event_to_status_p99_ms'])} ms, "
        f"raw p99 {_fmt(results['paced_raw_event_p99_ms'])} ms",
        *([f"  the API server's own time per status patch (audit log): burst p50 "
           f"{_fmt(results['api_server_patch_p50_ms'])} ms, p99 {_fmt(results['api_server_patch_p99_ms'])} ms; "
           f"paced p99 {_fmt(results['paced_api_server_patch_p99_ms'])} ms"] if "api_server_patch_p50_ms" in results
          else []),
        f"  burst drain {_fmt(results['status_drain_per_s'])} status patches/s ({int(results['status_drain_patches'])} "
        f"in {_fmt(results['status_drain_s'])} s); the API server alone right after: "
        f"{_fmt(results['patch_throughput_raw_per_s'])}/s (same VMs and identity, "
        f"{int(results['patch_throughput_raw_concurrency'])} in flight, {_fmt(results['status_patch_bytes'])} B each"
        + (f"; the operator's averaged {_fmt(results['status_patch_bytes_operator'])} B"
           if "status_patch_bytes_operator" in results else "") + ")"
        + (f"; the median of {int(results['status_drain_rounds'])} (burst, raw) pairs, whose ratios ran "
           f"{_fmt(results['status_drain_over_raw_min'])}-{_fmt(results['status_drain_over_raw_max'])}"
           if "status_drain_rounds" in results else ""),
        f"  foreign: {int(results['foreign_vms'])} VMs of {int(results['foreign_nodes'])} other nodes churning at "
        f"{_fmt(results['foreign_churn_per_s'])}/s, beside {int(results['foreign_own_vms'])} own: operator CPU "
        f"{_fmt(results['foreign_cpu_s_with'])} vs {_fmt(results['foreign_cpu_s_without'])} s in "
        f"{_fmt(results['foreign_interval_s'])} s, RSS {_fmt(results['foreign_rss_mib_with'])} vs "
        f"{_fmt(results['foreign_rss_mib_without'])} MiB (with vs without); watch events of other nodes' VMs: "
        f"{int(results['foreign_watch_events_other'])}; created in {_fmt(results['foreign_create_s'])} s",
        f"  start-up with {int(results['startup_reconcile_domains'])} domains "
        f"{_fmt(results['startup_reconcile_s'])} s; RSS {_fmt(results['rss_mib'])} MiB with "
        f"{int(results['rss_vms'])} VMs (empty {_fmt(results['rss_empty_mib'])} MiB)",
        *([migration_line(results)] if "migration_over_virsh" in results else []),
    ]
    return "\n".join(lines)


def migration_line(results: Mapping[str, float]) -> str:
    r = {"migration_operator_job_p50_s": "?", "migration_virsh_job_p50_s": "?",
         **{k: _fmt(v) for k, v in results.items() if k.startswith("migration")}}
    return (f"  live migration of a {r['migration_guest_mib']} MiB guest ({r['migration_count']} times, back and "
            f"forth): operator p50 {r['migration_operator_p50_s']} s (libvirt's job "
            f"{r['migration_operator_job_p50_s']} s), plain virsh migrate p50 {r['migration_virsh_p50_s']} s (job "
            f"{r['migration_virsh_job_p50_s']} s): "
            f"{r['migration_over_virsh']}x; downtime p50 {r['migration_downtime_operator_ms']} ms vs "
            f"{r['migration_downtime_virsh_ms']} ms")


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def plot(path: Path, *, creation_s: Sequence[float], raw_creation_s: Sequence[float],
         burst_operator_ms: Sequence[float], burst_raw_ms: Sequence[float], paced_operator_ms: Sequence[float],
         paced_raw_ms: Sequence[float], title: str) -> str | None:
    """Cumulative distributions: creation to Running; event to status vs raw delivery (burst, paced).

    None when written; without matplotlib (the `bench` extra) the numbers still stand: why there is no plot."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    _cdf(axes[0], {"operator: create request to Running": creation_s,
                   "raw: libvirt define + start": raw_creation_s}, "seconds", log=False)
    axes[0].set_title(f"creation to Running ({len(creation_s)} real guests)")
    _cdf(axes[1], {"operator: event to status patched": burst_operator_ms,
                   "raw: libvirt call to callback": burst_raw_ms}, "milliseconds", log=True)
    axes[1].set_title(f"event burst ({len(burst_raw_ms)} events)")
    _cdf(axes[2], {"operator: event to status patched": paced_operator_ms,
                   "raw: libvirt call to callback": paced_raw_ms}, "milliseconds", log=True)
    axes[2].set_title(f"paced events ({len(paced_raw_ms)} events)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _cdf(ax: object, series: Mapping[str, Sequence[float]], unit: str, *, log: bool) -> None:
    from matplotlib.axes import Axes

    assert isinstance(ax, Axes)
    for label, values in series.items():
        ordered = sorted(values)
        if not ordered:
            continue
        n = len(ordered)
        ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=label)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(unit)
    ax.set_ylabel("fraction of samples")
    ax.grid(True, which="both", alpha=0.3)
    ax.axhline(0.99, color="grey", linewidth=0.6, linestyle="--")
    ax.axhline(0.95, color="grey", linewidth=0.6, linestyle=":")
    ax.legend(loc="lower right", fontsize=8)
