"""meta.k8s.io/v1 Table rendering for custom resources and built-in kinds, as kube-apiserver serves it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kube_emulator.jsonpath import JSONPathError
from kube_emulator.table import (
    ColumnSpec,
    column_specs_for_crd_version,
    columns_for_builtin,
    columns_for_crd_version,
    human_duration,
    render_row,
    render_table,
)

NOW = datetime(2024, 1, 10, 12, 0, 0, tzinfo=UTC)
CREATED = "2024-01-10T11:55:00Z"  # five minutes before NOW

CRD_VERSION: dict[str, Any] = {
    "name": "v1alpha1",
    "served": True,
    "storage": True,
    "additionalPrinterColumns": [
        {"name": "Node", "type": "string", "jsonPath": ".spec.nodeName"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase"},
        {"name": "CPUs", "type": "integer", "jsonPath": ".spec.cpu.cores"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "IP", "type": "string", "jsonPath": ".status.addresses[*]", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}


def make_vm(name: str = "web", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "virt.libvirt-operator.dev/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": CREATED, "uid": "u-1"},
        "spec": {"nodeName": "node-1", "cpu": {"cores": 2}},
        "status": status,
    }


def cells(columns: list[ColumnSpec], obj: dict[str, Any]) -> list[Any]:
    cells_: list[Any] = render_row(columns, obj, now=NOW)["cells"]
    return cells_


# --- column definitions -------------------------------------------------------------------------------


def test_crd_columns_start_with_name_then_printer_columns() -> None:
    definitions = columns_for_crd_version(CRD_VERSION)
    assert [d["name"] for d in definitions] == ["Name", "Node", "Phase", "CPUs", "Ready", "IP", "Age"]
    name = definitions[0]
    assert (name["type"], name["format"], name["priority"]) == ("string", "name", 0)
    assert name["description"].startswith("Name must be unique within a namespace")
    assert definitions[1]["description"] == "Custom resource definition column (in JSONPath format): .spec.nodeName"
    assert definitions[2]["description"] == "Lifecycle phase"
    assert definitions[5]["priority"] == 1
    assert all(set(d) == {"name", "type", "format", "description", "priority"} for d in definitions)


def test_crd_without_printer_columns_gets_name_and_age() -> None:
    specs = column_specs_for_crd_version({"name": "v1"})
    assert [(s.name, s.type, s.json_path) for s in specs] == [
        ("Name", "string", None),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]
    assert cells(specs, make_vm()) == ["web", "5m"]


def test_a_printer_column_with_a_bad_json_path_is_rejected() -> None:
    with pytest.raises(JSONPathError):
        column_specs_for_crd_version({"additionalPrinterColumns": [{"name": "X", "type": "string", "jsonPath": ".a["}]})


# --- custom resource cells ----------------------------------------------------------------------------


def test_crd_cells_evaluate_the_json_paths() -> None:
    vm = make_vm(phase="Running", conditions=[{"type": "Ready", "status": "True"}], addresses=["10.0.0.5", "fe80::1"])
    specs = column_specs_for_crd_version(CRD_VERSION)
    assert cells(specs, vm) == ["web", "node-1", "Running", 2, "True", "10.0.0.5", "5m"]


def test_missing_values_are_none_so_kubectl_prints_none() -> None:
    specs = column_specs_for_crd_version(CRD_VERSION)
    assert cells(specs, make_vm()) == ["web", "node-1", None, 2, None, None, "5m"]


def cell_of(column_type: str, value: Any) -> Any:
    spec = ColumnSpec("X", column_type, json_path=".v")
    return render_row([spec], {"v": value}, now=NOW)["cells"][0]


@pytest.mark.parametrize(
    ("column_type", "value", "expected"),
    [
        ("integer", 3, 3),
        ("integer", 3.9, 3),  # truncated, as int64(float64) in Go
        ("integer", "3", None),
        ("integer", True, None),
        ("number", 2, 2.0),
        ("number", 2.5, 2.5),
        ("number", "2.5", None),
        ("boolean", False, False),
        ("boolean", "false", None),
        ("string", "text", "text"),
        ("string", 7, "7"),
        ("string", 2.5, "2.5"),
        ("string", True, "true"),
        ("string", {"b": 1, "a": [1, 2]}, '{"a":[1,2],"b":1}'),
        ("string", None, "<no value>"),
        ("date", "2024-01-10T11:59:30Z", "30s"),
        ("date", "2024-01-08T12:00:00.123456789+00:00", "47h"),  # 47.99h truncates
        ("date", "not a time", "<invalid>"),
        ("date", "", "<unknown>"),
        ("date", 12, None),
        ("integer", None, None),
        ("mystery", "x", None),
    ],
)
def test_cells_keep_or_convert_their_json_type(column_type: str, value: Any, expected: Any) -> None:
    assert cell_of(column_type, value) == expected
    assert type(cell_of(column_type, value)) is type(expected)


def test_a_cell_takes_only_the_first_match() -> None:
    spec = ColumnSpec("Names", "string", json_path=".items[*].name")
    assert render_row([spec], {"items": [{"name": "a"}, {"name": "b"}]}, now=NOW)["cells"] == ["a"]


# --- rows and tables ----------------------------------------------------------------------------------


def test_table_envelope_and_list_metadata() -> None:
    specs = column_specs_for_crd_version(CRD_VERSION)
    table = render_table(specs, [make_vm("a"), make_vm("b")], resource_version="42", continue_token="tok", now=NOW)
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "42", "continue": "tok"}
    assert table["columnDefinitions"] == columns_for_crd_version(CRD_VERSION)
    assert [row["cells"][0] for row in table["rows"]] == ["a", "b"]


def test_empty_list_metadata_is_omitted_and_no_headers_drops_definitions() -> None:
    table = render_table(columns_for_builtin("namespaces"), [], no_headers=True, now=NOW)
    assert table["metadata"] == {}
    assert table["columnDefinitions"] is None
    assert table["rows"] == []


def test_include_object_metadata_is_the_default_and_gives_partial_object_metadata() -> None:
    vm = make_vm()
    row = render_table(column_specs_for_crd_version(CRD_VERSION), [vm], now=NOW)["rows"][0]
    assert row["object"] == {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": vm["metadata"],
    }


def test_include_object_none_and_object() -> None:
    vm = make_vm()
    specs = column_specs_for_crd_version(CRD_VERSION)
    assert render_row(specs, vm, include_object="None", now=NOW)["object"] is None
    full = render_row(specs, vm, include_object="Object", now=NOW)["object"]
    assert full == vm and full is not vm


def test_unknown_include_object_is_rejected() -> None:
    with pytest.raises(ValueError, match="includeObject"):
        render_table([], [], include_object="Everything")


def test_rows_do_not_share_state_with_the_stored_object() -> None:
    vm = make_vm()
    row = render_row(column_specs_for_crd_version(CRD_VERSION), vm, now=NOW)
    row["object"]["metadata"]["name"] = "changed"
    assert vm["metadata"]["name"] == "web"


# --- ages -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=-5), "<invalid>"),
        (timedelta(seconds=-0.5), "0s"),
        (timedelta(seconds=0), "0s"),
        (timedelta(seconds=119), "119s"),
        (timedelta(minutes=2), "2m"),
        (timedelta(minutes=5, seconds=30), "5m30s"),
        (timedelta(minutes=59), "59m"),
        (timedelta(hours=2, minutes=59), "179m"),
        (timedelta(hours=3), "3h"),
        (timedelta(hours=7, minutes=15), "7h15m"),
        (timedelta(hours=30), "30h"),
        (timedelta(days=3), "3d"),
        (timedelta(days=3, hours=4), "3d4h"),
        (timedelta(days=100, hours=4), "100d"),
        (timedelta(days=365 * 3), "3y"),
        (timedelta(days=365 * 3 + 10), "3y10d"),
        (timedelta(days=365 * 10 + 100), "10y"),
    ],
)
def test_human_duration_matches_kubectl(delta: timedelta, text: str) -> None:
    assert human_duration(delta.total_seconds()) == text


# --- built-in kinds -------------------------------------------------------------------------------------


def node(**extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-1", "creationTimestamp": CREATED, "labels": {}},
        "spec": {},
        "status": {
            "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
            "nodeInfo": {"kubeletVersion": "v1.34.0", "osImage": "Debian GNU/Linux 12", "kernelVersion": "6.1.0",
                         "containerRuntimeVersion": "libvirt://12.8.0"},
            "addresses": [{"type": "Hostname", "address": "node-1"}, {"type": "InternalIP", "address": "10.0.0.1"}],
        },
    }  # fmt: skip
    obj.update(extra)
    return obj


def test_node_columns_and_cells() -> None:
    columns = columns_for_builtin("nodes")
    assert [(c.name, c.priority) for c in columns] == [
        ("Name", 0), ("Status", 0), ("Roles", 0), ("Age", 0), ("Version", 0), ("Internal-IP", 1),
        ("External-IP", 1), ("OS-Image", 1), ("Kernel-Version", 1), ("Container-Runtime", 1),
    ]  # fmt: skip
    assert cells(columns, node()) == [
        "node-1", "Ready", "<none>", "5m", "v1.34.0", "10.0.0.1", "<none>", "Debian GNU/Linux 12", "6.1.0",
        "libvirt://12.8.0",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("conditions", "unschedulable", "status"),
    [
        ([{"type": "Ready", "status": "True"}], False, "Ready"),
        ([{"type": "Ready", "status": "False"}], False, "NotReady"),
        ([{"type": "Ready", "status": "Unknown"}], False, "NotReady"),
        ([], False, "Unknown"),
        ([{"type": "Ready", "status": "True"}], True, "Ready,SchedulingDisabled"),
        ([], True, "Unknown,SchedulingDisabled"),
    ],
)
def test_node_status_column(conditions: list[dict[str, str]], unschedulable: bool, status: str) -> None:
    obj = node(spec={"unschedulable": unschedulable})
    obj["status"]["conditions"] = conditions
    assert cells(columns_for_builtin("nodes"), obj)[1] == status


def test_node_roles_come_from_role_labels_sorted() -> None:
    obj = node()
    obj["metadata"]["labels"] = {
        "node-role.kubernetes.io/worker": "",
        "node-role.kubernetes.io/control-plane": "",
        "kubernetes.io/role": "infra",
        "node-role.kubernetes.io/": "",
    }
    assert cells(columns_for_builtin("nodes"), obj)[2] == "control-plane,infra,worker"


def test_a_bare_node_prints_placeholders() -> None:
    bare = {"metadata": {"name": "n"}}
    assert cells(columns_for_builtin("nodes"), bare) == [
        "n", "Unknown", "<none>", "<unknown>", "", "<none>", "<none>", "<unknown>", "<unknown>", "<unknown>",
    ]  # fmt: skip


def test_namespace_columns() -> None:
    ns = {"metadata": {"name": "default", "creationTimestamp": CREATED}, "status": {"phase": "Active"}}
    columns = columns_for_builtin("namespaces")
    assert [c.name for c in columns] == ["Name", "Status", "Age"]
    assert cells(columns, ns) == ["default", "Active", "5m"]


def test_lease_columns() -> None:
    lease = {"metadata": {"name": "lock", "creationTimestamp": CREATED}, "spec": {"holderIdentity": "op-1"}}
    assert cells(columns_for_builtin("leases"), lease) == ["lock", "op-1", "5m"]


def test_core_event_columns() -> None:
    event = {
        "metadata": {"name": "web.17a", "creationTimestamp": CREATED},
        "type": "Warning",
        "reason": "Failed",
        "message": " disk missing \n",
        "involvedObject": {"kind": "VirtualMachine", "name": "web", "fieldPath": "spec.disks[0]"},
        "source": {"component": "libvirt-operator", "host": "node-1"},
        "firstTimestamp": "2024-01-10T11:00:00Z",
        "lastTimestamp": "2024-01-10T11:58:00Z",
        "count": 3,
    }
    columns = columns_for_builtin("events")
    assert [(c.name, c.priority) for c in columns] == [
        ("Last Seen", 0), ("Type", 0), ("Reason", 0), ("Object", 0), ("Subobject", 1), ("Source", 1),
        ("Message", 0), ("First Seen", 1), ("Count", 1), ("Name", 1),
    ]  # fmt: skip
    assert cells(columns, event) == [
        "2m (x3 over 60m)", "Warning", "Failed", "virtualmachine/web", "spec.disks[0]", "libvirt-operator, node-1",
        "disk missing", "60m", 3, "web.17a",
    ]  # fmt: skip


def test_events_k8s_io_event_and_series_columns() -> None:
    event = {
        "metadata": {"name": "e1"},
        "type": "Normal",
        "reason": "Started",
        "note": "domain started",
        "regarding": {"kind": "VirtualMachine", "name": "web"},
        "reportingController": "libvirt-operator",
        "reportingInstance": "node-1",
        "eventTime": "2024-01-10T11:50:00.000000Z",
        "series": {"count": 4, "lastObservedTime": "2024-01-10T11:59:00.000000Z"},
    }
    assert cells(columns_for_builtin("events"), event) == [
        "60s", "Normal", "Started", "virtualmachine/web", "", "libvirt-operator, node-1", "domain started",
        "10m", 4, "e1",
    ]  # fmt: skip


def test_other_resources_get_name_and_created_at() -> None:
    crd = {
        "metadata": {
            "name": "virtualmachines.virt.libvirt-operator.dev",
            "creationTimestamp": "2024-01-10T13:55:00+02:00",
        }
    }
    columns = columns_for_builtin("customresourcedefinitions")
    assert [(c.name, c.type) for c in columns] == [("Name", "string"), ("Created At", "date")]
    assert cells(columns, crd) == ["virtualmachines.virt.libvirt-operator.dev", "2024-01-10T11:55:00Z"]
    assert cells(columns, {"metadata": {"name": "x"}})[1] == "0001-01-01T00:00:00Z"


def test_builtin_tables_render_through_the_same_path() -> None:
    table = render_table(columns_for_builtin("namespaces"), [{"metadata": {"name": "default"}}], now=NOW)
    assert table["columnDefinitions"][1] == {
        "name": "Status",
        "type": "string",
        "format": "",
        "description": "The status of the namespace",
        "priority": 0,
    }
    assert table["rows"][0]["cells"] == ["default", "", "<unknown>"]
