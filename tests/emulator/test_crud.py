"""Objects through the official kubernetes client: CRUD, metadata, errors, selectors, patches, deletes."""

from __future__ import annotations

import json
from typing import Any

import kubernetes
import pytest
import requests
from kubernetes.client import ApiException

from tests.emulator.conftest import GROUP, PLURAL, VERSION, EmulatorThread, gadget, status_of


@pytest.fixture
def custom(api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api)


@pytest.fixture
def core(api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api)


def create(custom: kubernetes.client.CustomObjectsApi, name: str, namespace: str = "default",
           **spec: object) -> dict[str, Any]:
    result: dict[str, Any] = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                       gadget(name, namespace, **spec))
    return result


def test_builtin_namespaces_exist_with_system_metadata(core: kubernetes.client.CoreV1Api) -> None:
    names = {ns.metadata.name: ns for ns in core.list_namespace().items}
    assert {"default", "kube-system", "kube-public"} <= set(names)
    assert names["default"].metadata.uid and names["default"].metadata.creation_timestamp
    assert names["default"].status.phase == "Active"


def test_create_assigns_uid_timestamp_generation_and_a_shared_monotonic_resource_version(
        custom: kubernetes.client.CustomObjectsApi, core: kubernetes.client.CoreV1Api) -> None:
    first = create(custom, "a")
    namespace = core.create_namespace({"metadata": {"name": "other"}})
    second = create(custom, "b", "other")
    meta = first["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    versions = [int(meta["resourceVersion"]), int(namespace.metadata.resource_version),
                int(second["metadata"]["resourceVersion"])]
    assert versions == sorted(versions) and len(set(versions)) == 3


def test_get_returns_the_object_and_404_names_it(custom: kubernetes.client.CustomObjectsApi) -> None:
    create(custom, "a", size=3)
    got = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")
    assert got["spec"] == {"color": "red", "size": 3} and got["kind"] == "Gadget"
    with pytest.raises(ApiException) as caught:
        custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "missing")
    assert caught.value.status == 404
    assert status_of(caught.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'{PLURAL}.{GROUP} "missing" not found', "reason": "NotFound",
        "details": {"name": "missing", "group": GROUP, "kind": PLURAL}, "code": 404}


def test_create_twice_is_409_already_exists(custom: kubernetes.client.CustomObjectsApi) -> None:
    create(custom, "a")
    with pytest.raises(ApiException) as caught:
        create(custom, "a")
    assert caught.value.status == 409
    assert status_of(caught.value)["reason"] == "AlreadyExists"
    assert status_of(caught.value)["message"] == f'{PLURAL}.{GROUP} "a" already exists'


def test_create_in_a_missing_namespace_is_404(custom: kubernetes.client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as caught:
        create(custom, "a", "nowhere")
    assert caught.value.status == 404
    assert status_of(caught.value)["message"] == 'namespaces "nowhere" not found'


def test_generate_name_makes_a_unique_name(custom: kubernetes.client.CustomObjectsApi) -> None:
    body = gadget("", "default")
    body["metadata"] = {"generateName": "auto-"}
    made = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    assert made["metadata"]["name"].startswith("auto-") and len(made["metadata"]["name"]) == 10


def test_typed_list_has_kind_api_version_and_resource_version(emu: EmulatorThread,
                                                               custom: kubernetes.client.CustomObjectsApi) -> None:
    create(custom, "a")
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert listed["kind"] == "GadgetList" and listed["apiVersion"] == f"{GROUP}/{VERSION}"
    assert int(listed["metadata"]["resourceVersion"]) >= int(listed["items"][0]["metadata"]["resourceVersion"])
    assert listed["items"][0]["kind"] == "Gadget"
    namespaces = requests.get(emu.url + "/api/v1/namespaces", timeout=10).json()
    assert namespaces["kind"] == "NamespaceList" and namespaces["apiVersion"] == "v1"


def test_list_across_namespaces_and_per_namespace(custom: kubernetes.client.CustomObjectsApi,
                                                  core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "other"}})
    create(custom, "a")
    create(custom, "b", "other")
    everywhere = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in everywhere] == [("default", "a"),
                                                                                          ("other", "b")]
    assert [o["metadata"]["name"] for o in custom.list_namespaced_custom_object(
        GROUP, VERSION, "other", PLURAL)["items"]] == ["b"]


@pytest.mark.parametrize(("selector", "expected"), [
    ("tier=web", ["a", "b"]),
    ("tier==web", ["a", "b"]),
    ("tier!=web", ["c", "d"]),
    ("tier in (web,db)", ["a", "b", "c"]),
    ("tier notin (web)", ["c", "d"]),
    ("tier", ["a", "b", "c"]),
    ("!tier", ["d"]),
    ("tier=web,zone=x", ["a"]),
])
def test_label_selectors(custom: kubernetes.client.CustomObjectsApi, selector: str, expected: list[str]) -> None:
    labels = {"a": {"tier": "web", "zone": "x"}, "b": {"tier": "web"}, "c": {"tier": "db"}, "d": {}}
    for name, value in labels.items():
        body = gadget(name)
        body["metadata"]["labels"] = value
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    found = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, label_selector=selector)
    assert [o["metadata"]["name"] for o in found["items"]] == expected


def test_field_selectors_on_name_namespace_and_selectable_fields(
        custom: kubernetes.client.CustomObjectsApi, core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "other"}})
    create(custom, "a", nodeName="n1")
    create(custom, "b", nodeName="n2")
    body = gadget("c", "other", nodeName="n1")
    body["spec"]["color"] = "blue"
    custom.create_namespaced_custom_object(GROUP, VERSION, "other", PLURAL, body)

    def names(selector: str) -> list[str]:
        found = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, field_selector=selector)
        return [o["metadata"]["name"] for o in found["items"]]

    assert names("metadata.name=a") == ["a"]
    assert names("metadata.namespace=other") == ["c"]
    assert names("metadata.namespace!=other") == ["a", "b"]
    assert names("spec.color=blue") == ["c"]
    assert names("spec.color=red,metadata.namespace=default") == ["a", "b"]
    for undeclared in ("spec.size=1", "spec.nodeName=n1"):  # only the CRD's selectableFields, as in kube
        with pytest.raises(ApiException) as caught:
            names(undeclared)
        assert caught.value.status == 400 and "field label not supported" in status_of(caught.value)["message"]


def test_bad_label_selector_is_400(custom: kubernetes.client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as caught:
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, label_selector="a in b")
    assert caught.value.status == 400 and status_of(caught.value)["reason"] == "BadRequest"


def test_limit_and_continue_page_through_a_list(custom: kubernetes.client.CustomObjectsApi) -> None:
    for name in "abcde":
        create(custom, name)
    seen, token = [], None
    while True:
        page = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, limit=2,
                                                    _continue=token)
        seen += [o["metadata"]["name"] for o in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    assert seen == list("abcde")


def test_update_with_the_current_resource_version_succeeds_and_a_stale_one_is_409(
        custom: kubernetes.client.CustomObjectsApi) -> None:
    obj = create(custom, "a")
    obj["spec"]["size"] = 5
    updated = custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", obj)
    assert updated["spec"]["size"] == 5 and updated["metadata"]["generation"] == 2
    obj["spec"]["size"] = 6  # still carries the old resourceVersion
    with pytest.raises(ApiException) as caught:
        custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", obj)
    assert caught.value.status == 409
    assert status_of(caught.value)["reason"] == "Conflict"
    assert status_of(caught.value)["message"] == (
        f'Operation cannot be fulfilled on {PLURAL}.{GROUP} "a": the object has been modified; please apply your '
        "changes to the latest version and try again")


def test_update_of_a_custom_object_needs_a_resource_version(custom: kubernetes.client.CustomObjectsApi) -> None:
    obj = create(custom, "a")
    del obj["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as caught:
        custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", obj)
    assert caught.value.status == 422
    assert status_of(caught.value)["details"]["causes"][0]["field"] == "metadata.resourceVersion"


def test_update_that_changes_nothing_keeps_the_resource_version(custom: kubernetes.client.CustomObjectsApi) -> None:
    obj = create(custom, "a")
    again = custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", obj)
    assert again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_merge_patch_merges_and_null_removes(custom: kubernetes.client.CustomObjectsApi) -> None:
    create(custom, "a", size=3, label="abc")
    patched = custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a",
                                                    {"spec": {"size": 4, "label": None},
                                                     "metadata": {"labels": {"x": "y"}}})
    assert patched["spec"] == {"color": "red", "size": 4}
    assert patched["metadata"]["labels"] == {"x": "y"}


def _raw_patch(emu: EmulatorThread, path: str, content_type: str, body: object) -> requests.Response:
    return requests.patch(emu.url + path, data=json.dumps(body), headers={"Content-Type": content_type},
                          timeout=10)


def test_json_patch_applies_ops_and_a_failed_test_op_is_422(emu: EmulatorThread,
                                                            custom: kubernetes.client.CustomObjectsApi) -> None:
    obj = create(custom, "a", parts=[{"name": "p1"}])
    path = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/a"
    rv = obj["metadata"]["resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
           {"op": "add", "path": "/spec/parts/-", "value": {"name": "p2", "bus": "sata"}},
           {"op": "replace", "path": "/spec/size", "value": 7},
           {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/x"]}]
    rsp = _raw_patch(emu, path, "application/json-patch+json", ops)
    assert rsp.status_code == 200, rsp.text
    assert rsp.json()["spec"]["parts"] == [{"name": "p1", "bus": "virtio"}, {"name": "p2", "bus": "sata"}]
    assert rsp.json()["metadata"]["finalizers"] == ["example.com/x"]
    stale = _raw_patch(emu, path, "application/json-patch+json", ops[:1])
    assert stale.status_code == 422 and stale.json()["reason"] == "Invalid"


def test_strategic_merge_patch_merges_node_conditions_by_type(core: kubernetes.client.CoreV1Api) -> None:
    core.create_node({"metadata": {"name": "n1"}, "status": {"conditions": [
        {"type": "Ready", "status": "False"}, {"type": "MemoryPressure", "status": "False"}]}})
    core.patch_node_status("n1", {"status": {"conditions": [{"type": "Ready", "status": "True"},
                                                             {"type": "LibvirtReady", "status": "True"}]}})
    node = core.read_node("n1")
    assert [(c.type, c.status) for c in node.status.conditions] == [
        ("Ready", "True"), ("MemoryPressure", "False"), ("LibvirtReady", "True")]
    core.patch_node_status("n1", {"status": {"conditions": [{"type": "MemoryPressure", "$patch": "delete"}]}})
    assert [c.type for c in core.read_node("n1").status.conditions] == ["Ready", "LibvirtReady"]
    core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}, "spec": {"taints": [
        {"key": "k", "effect": "NoSchedule"}]}})
    node = core.read_node("n1")
    assert node.metadata.labels == {"a": "b"} and node.spec.taints[0].key == "k"


def test_strategic_merge_patch_on_a_custom_object_is_415(emu: EmulatorThread,
                                                         custom: kubernetes.client.CustomObjectsApi) -> None:
    create(custom, "a")
    rsp = _raw_patch(emu, f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/a",
                     "application/strategic-merge-patch+json", {"spec": {"size": 2}})
    assert rsp.status_code == 415 and rsp.json()["reason"] == "UnsupportedMediaType"


def test_delete_answers_the_object_and_then_404(custom: kubernetes.client.CustomObjectsApi) -> None:
    create(custom, "a")
    gone = custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a",
                                                  grace_period_seconds=0, propagation_policy="Foreground")
    assert gone["metadata"]["name"] == "a"
    with pytest.raises(ApiException) as caught:
        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")
    assert caught.value.status == 404


def test_delete_options_body_and_query_parameters_are_accepted(emu: EmulatorThread,
                                                               custom: kubernetes.client.CustomObjectsApi) -> None:
    create(custom, "a")
    create(custom, "b")
    base = f"{emu.url}/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"
    body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background",
            "gracePeriodSeconds": 0}
    assert requests.delete(f"{base}/a", json=body, timeout=10).status_code == 200
    assert requests.delete(f"{base}/b?gracePeriodSeconds=0&propagationPolicy=Orphan", timeout=10).status_code == 200
    bad = requests.delete(f"{base}/b", json={"propagationPolicy": "Sideways"}, timeout=10)
    assert bad.status_code == 422


def test_delete_precondition_on_uid_is_409(custom: kubernetes.client.CustomObjectsApi) -> None:
    create(custom, "a")
    with pytest.raises(ApiException) as caught:
        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a",
                                               body={"preconditions": {"uid": "not-it"}})
    assert caught.value.status == 409
    assert "the UID in the precondition (not-it) does not match the UID in record" in status_of(caught.value)["message"]


def test_delete_of_a_builtin_answers_a_success_status(core: kubernetes.client.CoreV1Api) -> None:
    core.create_node({"metadata": {"name": "n1"}})
    result = core.delete_node("n1")
    assert result["status"] == "Success" and result["details"]["name"] == "n1"


def test_dry_run_changes_nothing(custom: kubernetes.client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, gadget("a"), dry_run="All")
    assert custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"] == []


def test_invalid_name_is_422_naming_metadata_name(custom: kubernetes.client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as caught:
        create(custom, "Not_Valid")
    assert caught.value.status == 422
    assert status_of(caught.value)["details"]["causes"][0]["field"] == "metadata.name"


def test_namespace_deletion_removes_its_objects_and_protected_ones_stay(
        custom: kubernetes.client.CustomObjectsApi, core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "doomed"}})
    create(custom, "a", "doomed")
    core.delete_namespace("doomed")
    with pytest.raises(ApiException) as caught:
        core.read_namespace("doomed")
    assert caught.value.status == 404
    assert custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"] == []
    with pytest.raises(ApiException) as caught:
        core.delete_namespace("default")
    assert caught.value.status == 403


def test_leases_create_get_update_and_patch(api: kubernetes.client.ApiClient) -> None:
    leases = kubernetes.client.CoordinationV1Api(api)
    made = leases.create_namespaced_lease("kube-node-lease", {
        "metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}})
    made.spec.renew_time = "2026-01-01T00:00:00.000000Z"
    renewed = leases.replace_namespaced_lease("n1", "kube-node-lease", made)
    assert renewed.spec.renew_time is not None
    patched = leases.patch_namespaced_lease("n1", "kube-node-lease", {"spec": {"holderIdentity": "n2"}})
    assert patched.spec.holder_identity == "n2"
    assert leases.read_namespaced_lease("n1", "kube-node-lease").spec.lease_duration_seconds == 40


def test_events_created_then_listed_by_involved_object(core: kubernetes.client.CoreV1Api,
                                                       api: kubernetes.client.ApiClient) -> None:
    for name, uid in (("a", "u1"), ("b", "u2")):
        core.create_namespaced_event("default", {
            "metadata": {"generateName": f"{name}."},
            "involvedObject": {"kind": "Gadget", "name": name, "namespace": "default", "uid": uid},
            "reason": "Tested", "message": f"about {name}", "type": "Normal", "action": "Test",
            "eventTime": "2026-01-01T00:00:00.000000Z", "reportingComponent": "tests", "reportingInstance": "t1"})
    selector = "involvedObject.name=a,involvedObject.namespace=default,involvedObject.uid=u1"
    found = core.list_namespaced_event("default", field_selector=selector)
    assert [e.message for e in found.items] == ["about a"]
    v1 = kubernetes.client.EventsV1Api(api).list_namespaced_event("default", field_selector="regarding.name=b")
    assert [e.note for e in v1.items] == ["about b"]


def test_delete_collection_by_label(custom: kubernetes.client.CustomObjectsApi) -> None:
    for name, tier in (("a", "web"), ("b", "web"), ("c", "db")):
        body = gadget(name)
        body["metadata"]["labels"] = {"tier": tier}
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, label_selector="tier=web")
    left = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"]
    assert [o["metadata"]["name"] for o in left] == ["c"]
