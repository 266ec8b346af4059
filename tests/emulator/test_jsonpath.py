"""The Kubernetes JSONPath subset: selection as client-go does it, printing as kubectl does it."""

from __future__ import annotations

from typing import Any

import pytest

from kube_emulator.jsonpath import JSONPathError, compile_path, evaluate, format_results, format_text

VM: dict[str, Any] = {
    "apiVersion": "virt.libvirt-operator.dev/v1alpha1",
    "kind": "VirtualMachine",
    "metadata": {
        "name": "web",
        "labels": {"app.kubernetes.io/name": "web", "tier": "front"},
        "annotations": {"a.b/c": "d"},
    },
    "spec": {
        "nodeName": "node-1",
        "cpu": {"cores": 2},
        "disks": [
            {"name": "root", "size": 10, "bus": "virtio"},
            {"name": "data", "size": 100, "bus": "sata"},
            {"name": "scratch", "size": 5},
        ],
    },
    "status": {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Up"},
            {"type": "Synced", "status": "False"},
        ],
    },
}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (".metadata.name", ["web"]),
        ("{.metadata.name}", ["web"]),
        ("{ .spec.cpu.cores }", [2]),
        ("$.spec.nodeName", ["node-1"]),
        ("metadata.name", ["web"]),
        (".spec.disks[0].name", ["root"]),
        (".spec.disks[-1].name", ["scratch"]),
        (".spec.disks[*].name", ["root", "data", "scratch"]),
        (".spec.disks[*].bus", ["virtio", "sata"]),
        (".spec.disks[0,2].size", [10, 5]),
        (".spec.disks[1:].name", ["data", "scratch"]),
        (".spec.disks[::2].name", ["root", "scratch"]),
        (".spec.disks[:-1].name", ["root", "data"]),
        (".metadata.labels.*", ["web", "front"]),
        (".metadata.labels['app.kubernetes.io/name']", ["web"]),
        ('.metadata.labels["tier"]', ["front"]),
        (".metadata.labels['tier','app.kubernetes.io/name']", ["front", "web"]),
        (r".metadata.labels.app\.kubernetes\.io/name", ["web"]),
        (".metadata.annotations.a\\.b/c", ["d"]),
        ('.status.conditions[?(@.type=="Ready")].status', ["True"]),
        (".status.conditions[?(@.type == 'Ready')].reason", ["Up"]),
        ('.status.conditions[?(@.status!="True")].type', ["Synced"]),
        (".spec.disks[?(@.size>10)].name", ["data"]),
        (".spec.disks[?(@.size<=10)].name", ["root", "scratch"]),
        (".spec.disks[?(@.size>=100)].name", ["data"]),
        (".spec.disks[?(@.size<6.5)].name", ["scratch"]),
        (".spec.disks[?(@.bus)].name", ["root", "data"]),
        ("..cores", [2]),
        ("..conditions[0].type", ["Ready"]),
        (".status..status", ["True", "False"]),
        ("$", [VM]),
    ],
)
def test_selects_what_kubectl_selects(expr: str, expected: list[Any]) -> None:
    assert evaluate(expr, VM) == expected


@pytest.mark.parametrize(
    "expr",
    [
        ".metadata.missing",
        ".spec.disks[7].name",
        ".spec.disks[-9]",
        ".spec.cpu.cores.deeper",
        ".spec.cpu[0]",
        '.status.conditions[?(@.type=="Nope")].status',
        ".metadata.name[*]",
        ".spec.disks.name",  # a field on a list needs [*]
    ],
)
def test_missing_keys_and_indices_select_nothing(expr: str) -> None:
    assert evaluate(expr, VM) == []


def test_filters_compare_numbers_by_value_and_other_types_never_equal() -> None:
    items = [{"v": 1}, {"v": 1.0}, {"v": "1"}, {"v": True}, {"v": None}]
    assert evaluate("[?(@.v==1)]", items) == [{"v": 1}, {"v": 1.0}]
    assert evaluate("[?(@.v=='1')]", items) == [{"v": "1"}]
    assert evaluate("[?(@.v==true)]", items) == [{"v": True}]
    assert evaluate("[?(@.v==null)]", items) == [{"v": None}]
    assert evaluate("[?(@.v>0)]", items) == [{"v": 1}, {"v": 1.0}]


def test_filters_can_compare_two_paths_and_nest() -> None:
    items = [{"a": 1, "b": 1}, {"a": 1, "b": 2}]
    assert evaluate("[?(@.a==@.b)]", items) == [{"a": 1, "b": 1}]
    nested = {"nodes": [{"name": "n1", "conds": [{"type": "Ready"}]}, {"name": "n2", "conds": []}]}
    assert evaluate('.nodes[?(@.conds[0].type=="Ready")].name', nested) == ["n1"]


def test_recursive_descent_visits_the_whole_tree_in_document_order() -> None:
    assert evaluate("..name", VM) == ["web", "root", "data", "scratch"]


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "{",
        "{.a",
        ".a[",
        ".a[0",
        ".a[x]",
        ".a[1:2:3:4]",
        ".a[::0]",
        ".a[?(@.b = 1)]",
        ".a[?(@.b==)]",
        ".a[?(@.b=='x)]",
        ".a.",
        ".a b",
        "[?(@.x == 1.2.3)]",
    ],
)
def test_invalid_expressions_raise(expr: str) -> None:
    with pytest.raises(JSONPathError):
        evaluate(expr, VM)


def test_errors_are_value_errors() -> None:
    assert issubclass(JSONPathError, ValueError)


def test_compiled_paths_are_cached_and_reusable() -> None:
    run = compile_path(".metadata.name")
    assert compile_path(".metadata.name") is run
    assert run(VM) == ["web"]
    assert run({"metadata": {"name": "other"}}) == ["other"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        (3, "3"),
        (2.5, "2.5"),
        (1e6, "1e+06"),
        (100000.0, "100000"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (True, "true"),
        (None, "null"),
        ({"b": 1, "a": "<x>"}, '{"a":"\\u003cx\\u003e","b":1}'),
        ([1, 2.0, "s", None], '[1,2,"s",null]'),
        ({"f": 1e21, "g": 1e-7}, '{"f":1e+21,"g":1e-7}'),
    ],
)
def test_format_text_prints_like_kubectl(value: Any, text: str) -> None:
    assert format_text(value) == text


def test_format_results_joins_with_spaces() -> None:
    assert format_results(evaluate(".spec.disks[*].name", VM)) == "root data scratch"
    assert format_results([]) == ""
