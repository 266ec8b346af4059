"""The 1000-node model of docs/benchmarks.md is arithmetic on one run's keys: checked on round numbers."""

from __future__ import annotations

from benchmarks.model import Workload, markdown, model

RESULTS = {"api_writes_per_event": 1.0, "status_patch_bytes": 500.0, "rss_mib": 200.0, "rss_empty_mib": 100.0,
           "rss_vms": 1000, "patch_throughput_raw_per_s": 400.0, "api_server_patch_p50_ms": 20.0}


def rows() -> dict[str, tuple[str, str]]:
    work = Workload(nodes=1000, vms_per_node=100, changes_per_vm_hour=36.0, object_bytes=1000)
    return {r.quantity: (r.with_selector, r.without) for r in model(RESULTS, work)}


def test_the_selector_divides_the_watch_fan_out_by_the_number_of_nodes() -> None:
    table = rows()
    # 100,000 VMs x 36 changes/h = 1000 patches/s cluster-wide, 1/s per node
    assert table["status patches/s, cluster (API server writes)"] == ("1,000/s", "1,000/s")
    assert table["watch events/s one operator receives"] == ("1/s", "1,000/s")
    assert table["watch events/s the API server sends (all nodes)"] == ("1,000/s", "1,000,000/s")
    assert table["watch bytes/s the API server sends"] == ("1 MB/s", "1 GB/s")


def test_memory_grows_with_the_vms_an_operator_caches() -> None:
    # 0.1 MiB per cached VM over the empty 100 MiB
    assert rows()["operator RSS"] == ("110 MiB", "10,100 MiB")


def test_the_writes_are_set_against_the_api_servers_measured_capacity() -> None:
    assert rows()["share of that capacity the cluster's writes use"] == ("250%", "250%")
    assert "| quantity |" in markdown(model(RESULTS, Workload()))
