"""Patch semantics of the emulator: the RFC examples and the strategic-merge directives kubectl sends."""

from __future__ import annotations

from typing import Any

import pytest

from kube_emulator import errors
from kube_emulator.patches import json_patch, merge_patch, schema_list_keys, strategic_merge


@pytest.mark.parametrize(("target", "patch", "result"), [  # RFC 7386 appendix A
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_merge_patch_rfc7386_examples(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_json_patch_ops_and_failures() -> None:
    doc = {"foo": ["bar", "baz"], "a/b": 1, "m~n": 2}
    ops = [{"op": "add", "path": "/foo/1", "value": "qux"}, {"op": "remove", "path": "/foo/0"},
           {"op": "replace", "path": "/a~1b", "value": 3}, {"op": "copy", "from": "/m~0n", "path": "/c"},
           {"op": "move", "from": "/c", "path": "/d"}, {"op": "test", "path": "/d", "value": 2}]
    assert json_patch(doc, ops) == {"foo": ["qux", "baz"], "a/b": 3, "m~n": 2, "d": 2}
    assert doc == {"foo": ["bar", "baz"], "a/b": 1, "m~n": 2}  # the input is left alone
    for bad in ([{"op": "test", "path": "/foo/0", "value": "nope"}], [{"op": "remove", "path": "/missing"}],
                [{"op": "replace", "path": "/foo/9", "value": 1}]):
        with pytest.raises(errors.ApiError) as caught:
            json_patch(doc, bad)
        assert caught.value.code == 422
    with pytest.raises(errors.ApiError) as caught:
        json_patch(doc, {"op": "add"})
    assert caught.value.code == 400


KEYS = {"status.conditions": "type", "metadata.finalizers": ""}


def test_strategic_merge_directives() -> None:
    node = {"metadata": {"finalizers": ["a"], "labels": {"x": "1"}},
            "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Disk", "status": "False"}],
                       "images": [1, 2]}}
    patch = {"metadata": {"finalizers": ["b"], "labels": {"x": None}},
             "$setElementOrder/status.conditions": [],
             "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Disk", "$patch": "delete"},
                                       {"type": "New", "status": "True"}],
                        "$setElementOrder/conditions": [{"type": "New"}, {"type": "Ready"}],
                        "images": [3]}}
    assert strategic_merge(node, patch, KEYS) == {
        "metadata": {"finalizers": ["a", "b"], "labels": {}},
        "status": {"conditions": [{"type": "New", "status": "True"}, {"type": "Ready", "status": "True"}],
                   "images": [3]}}
    assert strategic_merge(node, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, KEYS)[
        "metadata"]["finalizers"] == []
    replaced = strategic_merge(node, {"status": {"$patch": "replace", "images": []}}, KEYS)
    assert replaced["status"] == {"images": []}
    retained = strategic_merge({"spec": {"a": 1, "b": 2}}, {"spec": {"$retainKeys": ["a"], "a": 3}}, KEYS)
    assert retained == {"spec": {"a": 3}}


def test_schema_list_keys_for_server_side_apply() -> None:
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "parts": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                  "items": {"type": "object"}},
        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}}}
    assert schema_list_keys(schema) == {"spec.parts": ("name",), "spec.tags": ()}
