"""Status subresource, generation, finalizers and cascading deletes of namespaces and CRDs."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException

from tests.emulator.conftest import FIXTURE_CRD, GROUP, PLURAL, VERSION, EmulatorThread, gadget


@pytest.fixture
def custom(api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api)


def _get(custom: kubernetes.client.CustomObjectsApi, name: str) -> dict[str, Any]:
    found: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name)
    return found


def test_create_drops_status_and_main_writes_ignore_it(custom: kubernetes.client.CustomObjectsApi) -> None:
    body = gadget("a")
    body["status"] = {"phase": "Forged"}
    made = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    assert "status" not in made
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "a", {"status": {"phase": "Up"}})
    patched = custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a",
                                                    {"status": {"phase": "Down"}, "spec": {"size": 2}})
    assert patched["status"] == {"phase": "Up"} and patched["spec"]["size"] == 2


def test_status_writes_change_only_status_and_not_generation(custom: kubernetes.client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    current = _get(custom, "a")
    current["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    current["spec"]["size"] = 9
    current["metadata"]["labels"] = {"ignored": "yes"}
    written = custom.replace_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "a", current)
    assert written["status"]["phase"] == "Running"
    assert written["spec"]["size"] == 1 and "labels" not in written["metadata"]
    assert written["metadata"]["generation"] == 1
    assert int(written["metadata"]["resourceVersion"]) > int(current["metadata"]["resourceVersion"])


def test_generation_moves_on_spec_changes_only(custom: kubernetes.client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a",
                                          {"metadata": {"labels": {"x": "y"}, "annotations": {"a": "b"}}})
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "a", {"status": {"phase": "Up"}})
    assert _get(custom, "a")["metadata"]["generation"] == 1
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", {"spec": {"size": 3}})
    assert _get(custom, "a")["metadata"]["generation"] == 2


def test_node_status_subresource(api: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(api)
    core.create_node({"metadata": {"name": "n1"}, "status": {"capacity": {"cpu": "4"}}})
    core.patch_node("n1", {"status": {"capacity": {"cpu": "8"}}, "metadata": {"labels": {"a": "b"}}})
    node = core.read_node("n1")
    assert node.status.capacity == {"cpu": "4"} and node.metadata.labels == {"a": "b"}
    core.patch_node_status("n1", {"status": {"capacity": {"cpu": "8"}}, "metadata": {"labels": {"c": "d"}}})
    node = core.read_node_status("n1")
    assert node.status.capacity == {"cpu": "8"} and node.metadata.labels == {"a": "b"}


def test_delete_with_finalizers_marks_then_removing_the_last_one_deletes(
        custom: kubernetes.client.CustomObjectsApi) -> None:
    body = gadget("a")
    body["metadata"]["finalizers"] = ["example.com/one", "example.com/two"]
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    marked = custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")
    assert marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 0
    assert marked["metadata"]["generation"] == 2
    again = custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")
    assert again["metadata"]["resourceVersion"] == marked["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as caught:
        custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a",
                                              {"metadata": {"finalizers": ["example.com/one", "example.com/new"]}})
    assert caught.value.status == 422
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a",
                                          {"metadata": {"finalizers": ["example.com/two"]}})
    assert _get(custom, "a")["metadata"]["finalizers"] == ["example.com/two"]
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as caught:
        _get(custom, "a")
    assert caught.value.status == 404


def test_namespace_waits_for_finalizers_of_its_objects(custom: kubernetes.client.CustomObjectsApi,
                                                       api: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "doomed"}})
    body = gadget("a", "doomed")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    custom.create_namespaced_custom_object(GROUP, VERSION, "doomed", PLURAL, body)
    core.delete_namespace("doomed")
    assert core.read_namespace("doomed").status.phase == "Terminating"
    with pytest.raises(ApiException) as caught:
        custom.create_namespaced_custom_object(GROUP, VERSION, "doomed", PLURAL, gadget("b", "doomed"))
    assert caught.value.status == 403
    custom.patch_namespaced_custom_object(GROUP, VERSION, "doomed", PLURAL, "a", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as caught:
        core.read_namespace("doomed")
    assert caught.value.status == 404


def test_deleting_the_crd_deletes_its_objects_and_stops_serving_it(
        emu: EmulatorThread, custom: kubernetes.client.CustomObjectsApi, api: kubernetes.client.ApiClient) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"))
    crd_name = yaml.safe_load(FIXTURE_CRD.read_text())["metadata"]["name"]
    kubernetes.client.ApiextensionsV1Api(api).delete_custom_resource_definition(crd_name)
    with pytest.raises(ApiException) as caught:
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert caught.value.status == 404
    assert emu.call(emu.emulator.objects, GROUP, VERSION, PLURAL) == []


def test_crd_deletion_waits_for_the_finalizers_of_its_objects(
        emu: EmulatorThread, custom: kubernetes.client.CustomObjectsApi, api: kubernetes.client.ApiClient) -> None:
    body = gadget("held")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    crds = kubernetes.client.ApiextensionsV1Api(api)
    crd_name = yaml.safe_load(FIXTURE_CRD.read_text())["metadata"]["name"]
    crds.delete_custom_resource_definition(crd_name)
    terminating = crds.read_custom_resource_definition(crd_name)
    assert terminating.metadata.deletion_timestamp is not None
    assert "Terminating" in [c.type for c in terminating.status.conditions]
    assert _get(custom, "held")["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "held", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as caught:
        crds.read_custom_resource_definition(crd_name)
    assert caught.value.status == 404
