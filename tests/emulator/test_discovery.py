"""Discovery and OpenAPI through real HTTP: the kubernetes client, raw requests and kubectl."""

from __future__ import annotations

from typing import Any

import kubernetes
import requests
import yaml

from tests.emulator.conftest import GROUP, REPO, EmulatorThread, Kubectl

AGGREGATED_ACCEPT = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
                     "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")


def _resources(emu: EmulatorThread, path: str) -> dict[str, dict[str, Any]]:
    body = requests.get(emu.url + path, timeout=10).json()
    assert body["kind"] == "APIResourceList"
    return {r["name"]: r for r in body["resources"]}


def test_version_reports_kubernetes_1_34(api: kubernetes.client.ApiClient) -> None:
    info = kubernetes.client.VersionApi(api).get_code()
    assert (info.major, info.minor) == ("1", "34")
    assert info.git_version.startswith("v1.34.")


def test_core_api_lists_v1_and_its_resources(emu: EmulatorThread, api: kubernetes.client.ApiClient) -> None:
    assert kubernetes.client.CoreApi(api).get_api_versions().versions == ["v1"]
    core = _resources(emu, "/api/v1")
    assert {"namespaces", "nodes", "nodes/status", "events", "namespaces/status"} <= set(core)
    assert core["namespaces"]["namespaced"] is False and core["events"]["namespaced"] is True
    assert core["nodes"]["shortNames"] == ["no"]
    assert core["nodes/status"]["verbs"] == ["get", "patch", "update"]
    assert "watch" in core["events"]["verbs"]


def test_groups_include_builtins_and_the_registered_crd(api: kubernetes.client.ApiClient) -> None:
    groups = {g.name: g for g in kubernetes.client.ApisApi(api).get_api_versions().groups}
    for name in ("apiextensions.k8s.io", "coordination.k8s.io", "events.k8s.io", GROUP):
        assert name in groups
    assert groups[GROUP].preferred_version.group_version == f"{GROUP}/v1"


def test_crd_resource_lists_subresource_short_names_categories_and_verbs(emu: EmulatorThread) -> None:
    found = _resources(emu, f"/apis/{GROUP}/v1")
    gadgets = found["gadgets"]
    assert gadgets["kind"] == "Gadget" and gadgets["namespaced"] is True
    assert gadgets["shortNames"] == ["gdg"] and gadgets["categories"] == ["fixtures"]
    assert set(gadgets["verbs"]) == {"create", "delete", "deletecollection", "get", "list", "patch", "update",
                                     "watch"}
    assert found["gadgets/status"]["verbs"] == ["get", "patch", "update"]
    assert "leases" in _resources(emu, "/apis/coordination.k8s.io/v1")
    assert "customresourcedefinitions" in _resources(emu, "/apis/apiextensions.k8s.io/v1")
    assert "events" in _resources(emu, "/apis/events.k8s.io/v1")


def test_group_document_names_its_preferred_version(emu: EmulatorThread) -> None:
    body = requests.get(f"{emu.url}/apis/{GROUP}", timeout=10).json()
    assert body["kind"] == "APIGroup" and body["preferredVersion"]["version"] == "v1"


def test_aggregated_discovery_request_gets_plain_lists_as_json(emu: EmulatorThread) -> None:
    for path, kind in (("/api", "APIVersions"), ("/apis", "APIGroupList")):
        rsp = requests.get(emu.url + path, headers={"Accept": AGGREGATED_ACCEPT}, timeout=10)
        assert rsp.status_code == 200
        assert rsp.headers["Content-Type"] == "application/json"
        assert rsp.json()["kind"] == kind


def test_unknown_paths_are_404_status(emu: EmulatorThread) -> None:
    for path in ("/apis/nope.example.com/v1", "/api/v1/pods", f"/apis/{GROUP}/v1/widgets"):
        rsp = requests.get(emu.url + path, timeout=10)
        assert rsp.status_code == 404
        assert rsp.json()["reason"] == "NotFound" and rsp.json()["kind"] == "Status"


def test_openapi_v3_declares_field_validation(emu: EmulatorThread) -> None:
    index = requests.get(emu.url + "/openapi/v3", timeout=10).json()["paths"]
    assert {"api/v1", f"apis/{GROUP}/v1"} <= set(index)
    doc = requests.get(emu.url + index[f"apis/{GROUP}/v1"]["serverRelativeURL"], timeout=10).json()
    patch = doc["paths"][f"/apis/{GROUP}/v1/namespaces/{{namespace}}/gadgets/{{name}}"]["patch"]
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert patch["x-kubernetes-group-version-kind"] == {"group": GROUP, "kind": "Gadget", "version": "v1"}
    assert "application/strategic-merge-patch+json" not in patch["requestBody"]["content"]


def test_openapi_v2_is_json_with_every_kind_and_406_to_a_protobuf_only_accept(emu: EmulatorThread) -> None:
    rsp = requests.get(emu.url + "/openapi/v2", timeout=10)
    assert rsp.status_code == 200 and rsp.headers["Content-Type"].startswith("application/json")
    doc = rsp.json()
    assert doc["swagger"] == "2.0"
    patch = doc["paths"]["/api/v1/namespaces/{namespace}/secrets/{name}"]["patch"]
    assert {"name": "fieldValidation", "in": "query", "required": False, "type": "string",
            "uniqueItems": True} in patch["parameters"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "", "kind": "Secret", "version": "v1"}
    gadget = doc["definitions"][f"{'.'.join(reversed(GROUP.split('.')))}.v1.Gadget"]
    assert gadget["x-kubernetes-group-version-kind"] == [{"group": GROUP, "kind": "Gadget", "version": "v1"}]
    assert "io.k8s.api.apps.v1.DaemonSet" in doc["definitions"]

    cached = requests.get(emu.url + "/openapi/v2", headers={"If-None-Match": rsp.headers["ETag"]}, timeout=10)
    assert cached.status_code == 304
    protobuf_only = requests.get(emu.url + "/openapi/v2", timeout=10, headers={
        "Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"})
    assert protobuf_only.status_code == 406


def test_crd_registered_at_runtime_is_served_at_once_and_leaves_on_delete(
        emu: EmulatorThread, api: kubernetes.client.ApiClient) -> None:
    crds = kubernetes.client.ApiextensionsV1Api(api)
    manifest = yaml.safe_load((REPO / "operator/libvirt_operator/api/crd.yaml").read_text())
    crds.create_custom_resource_definition(manifest)
    group = manifest["spec"]["group"]
    assert "virtualmachines" in _resources(emu, f"/apis/{group}/v1alpha1")
    established = crds.read_custom_resource_definition(manifest["metadata"]["name"])
    assert {c.type: c.status for c in established.status.conditions}["Established"] == "True"
    crds.delete_custom_resource_definition(manifest["metadata"]["name"])
    assert requests.get(f"{emu.url}/apis/{group}/v1alpha1", timeout=10).status_code == 404


def test_kubectl_api_resources_and_versions(kubectl: Kubectl) -> None:
    resources = kubectl.run("api-resources", "-o", "name").stdout.split()
    assert {"namespaces", "nodes", "events", "leases.coordination.k8s.io", f"gadgets.{GROUP}",
            "customresourcedefinitions.apiextensions.k8s.io", "events.events.k8s.io"} <= set(resources)
    versions = kubectl.run("api-versions").stdout.split()
    assert {"v1", f"{GROUP}/v1", "coordination.k8s.io/v1", "apiextensions.k8s.io/v1"} <= set(versions)
    assert "Server Version: v1.34" in kubectl.run("version").stdout
