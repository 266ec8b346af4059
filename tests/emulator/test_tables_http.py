"""Server-side printing over HTTP: `Accept: ...;as=Table` for gets, lists and watches."""

from __future__ import annotations

import json
from typing import Any

import kubernetes
import pytest
import requests

from tests.emulator.conftest import GROUP, PLURAL, VERSION, EmulatorThread, gadget

# What kubectl get sends.
TABLE_ACCEPT = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
                "application/json")
COLLECTION = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"


@pytest.fixture
def custom(api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    client = kubernetes.client.CustomObjectsApi(api)
    client.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a", size=3))
    client.patch_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "a", {"status": {
        "phase": "Up", "conditions": [{"type": "Ready", "status": "True"}]}})
    return client


def get_table(emu: EmulatorThread, path: str, accept: str = TABLE_ACCEPT) -> dict[str, Any]:
    rsp = requests.get(emu.url + path, headers={"Accept": accept}, timeout=10)
    assert rsp.status_code == 200, rsp.text
    body: dict[str, Any] = rsp.json()
    return body


def test_list_table_has_printer_columns_with_priorities(emu: EmulatorThread,
                                                        custom: kubernetes.client.CustomObjectsApi) -> None:
    table = get_table(emu, COLLECTION)
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"]["resourceVersion"]
    columns = [(c["name"], c["type"], c["priority"]) for c in table["columnDefinitions"]]
    assert columns == [("Name", "string", 0), ("Color", "string", 0), ("Size", "integer", 0),
                       ("Phase", "string", 0), ("Age", "date", 0), ("Ready", "string", 1)]
    [row] = table["rows"]
    assert row["cells"][:4] == ["a", "red", 3, "Up"] and row["cells"][5] == "True"
    assert row["object"]["kind"] == "PartialObjectMetadata" and row["object"]["metadata"]["name"] == "a"


def test_get_table_and_include_object(emu: EmulatorThread, custom: kubernetes.client.CustomObjectsApi) -> None:
    single = get_table(emu, f"{COLLECTION}/a?includeObject=Object")
    assert len(single["rows"]) == 1 and single["rows"][0]["object"]["spec"]["color"] == "red"
    bare = get_table(emu, f"{COLLECTION}?includeObject=None")
    assert bare["rows"][0]["object"] is None


def test_v1beta1_table_when_asked_first(emu: EmulatorThread, custom: kubernetes.client.CustomObjectsApi) -> None:
    table = get_table(emu, COLLECTION, "application/json;as=Table;v=v1beta1;g=meta.k8s.io")
    assert table["apiVersion"] == "meta.k8s.io/v1beta1"


def test_builtin_tables(emu: EmulatorThread, api: kubernetes.client.ApiClient) -> None:
    kubernetes.client.CoreV1Api(api).create_node({"metadata": {"name": "n1"}, "status": {
        "conditions": [{"type": "Ready", "status": "True"}]}})
    namespaces = get_table(emu, "/api/v1/namespaces")
    assert [c["name"] for c in namespaces["columnDefinitions"]] == ["Name", "Status", "Age"]
    assert ["default", "Active"] == namespaces["rows"][0]["cells"][:2]
    nodes = get_table(emu, "/api/v1/nodes")
    assert [c["name"] for c in nodes["columnDefinitions"]][:3] == ["Name", "Status", "Roles"]
    assert nodes["rows"][0]["cells"][:2] == ["n1", "Ready"]


def test_partial_object_metadata_list(emu: EmulatorThread, custom: kubernetes.client.CustomObjectsApi) -> None:
    body = get_table(emu, COLLECTION, "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io")
    assert body["kind"] == "PartialObjectMetadataList"
    assert body["items"][0]["metadata"]["name"] == "a" and "spec" not in body["items"][0]


def test_unacceptable_media_type_is_406(emu: EmulatorThread) -> None:
    rsp = requests.get(emu.url + COLLECTION, headers={"Accept": "application/vnd.kubernetes.protobuf"}, timeout=10)
    assert rsp.status_code == 406 and rsp.json()["reason"] == "NotAcceptable"


def test_watch_with_table_accept_streams_tables_with_headers_once(
        emu: EmulatorThread, custom: kubernetes.client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("b"))
    events = []
    with requests.get(f"{emu.url}{COLLECTION}?watch=1&resourceVersion=0&timeoutSeconds=5",
                      headers={"Accept": TABLE_ACCEPT}, stream=True, timeout=10) as rsp:
        for line in rsp.iter_lines():
            events.append(json.loads(line))
            if len(events) == 2:
                break
    assert [e["object"]["kind"] for e in events] == ["Table", "Table"]
    assert events[0]["object"]["columnDefinitions"] and not events[1]["object"]["columnDefinitions"]
    assert [e["object"]["rows"][0]["cells"][0] for e in events] == ["a", "b"]
