"""Discovery and CRD registration: the emulator's documents against kube-apiserver's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from testbed.polling import wait_for
from tests.differential.conftest import (
    CRDS_PATH,
    DM_GROUP,
    DM_VERSION,
    GADGET_GROUP,
    GADGET_VERSION,
    RUN,
    VM_GROUP,
    VM_VERSION,
    both,
    established,
    served,
)
from tests.differential.target import Api, assert_same, normalise

JSON = dict[str, Any]


def test_core_api_versions_are_the_same(apis: tuple[Api, Api]) -> None:
    def scenario(api: Api) -> JSON:
        body: JSON = api.ok("GET", "/api")
        for entry in body.get("serverAddressByClientCIDRs", []):
            entry["serverAddress"] = "<host:port>"
        return body

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def _groups(api: Api) -> dict[str, JSON]:
    body = api.ok("GET", "/apis")
    assert body["kind"] == "APIGroupList"
    return {g["name"]: g for g in body["groups"]}


def test_every_group_the_emulator_serves_is_listed_as_the_real_server_lists_it(apis: tuple[Api, Api]) -> None:
    real, emulated = both(apis, _groups)
    assert set(emulated) <= set(real)
    assert_same({name: real[name] for name in emulated}, emulated)


def test_group_documents_are_the_same(apis: tuple[Api, Api]) -> None:
    for group in (VM_GROUP, DM_GROUP, GADGET_GROUP, "coordination.k8s.io", "apiextensions.k8s.io"):
        real, emulated = both(apis, lambda api, g=group: api.ok("GET", f"/apis/{g}"))  # type: ignore[misc]
        assert_same(real, emulated, group)


def _resources(path: str) -> Callable[[Api], dict[str, JSON]]:
    def scenario(api: Api) -> dict[str, JSON]:
        body = api.ok("GET", path)
        assert body["kind"] == "APIResourceList"
        return {r["name"]: r for r in body["resources"]}
    return scenario


def test_custom_resource_lists_are_the_same(apis: tuple[Api, Api]) -> None:
    """Names, verbs (in kube's order), short names, categories, the status subresource, storage hash."""
    for group, version in ((VM_GROUP, VM_VERSION), (DM_GROUP, DM_VERSION), (GADGET_GROUP, GADGET_VERSION)):
        real, emulated = both(apis, _resources(f"/apis/{group}/{version}"))
        assert_same(real, emulated, group)


def test_builtin_resources_the_emulator_serves_are_listed_as_the_real_server_lists_them(
        apis: tuple[Api, Api]) -> None:
    for path in ("/api/v1", "/apis/coordination.k8s.io/v1", "/apis/events.k8s.io/v1",
                 "/apis/apiextensions.k8s.io/v1"):
        real, emulated = both(apis, _resources(path))
        assert set(emulated) <= set(real), path
        assert_same({name: real[name] for name in emulated}, emulated, path)


def _widget_crd(group: str) -> JSON:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group, "scope": "Cluster",
            "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wdg"]},
            "versions": [{"name": "v1", "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                              "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}],
        },
    }


def test_a_registered_crd_is_established_served_and_gone_after_delete(apis: tuple[Api, Api],
                                                                      unique: Callable[[str], str]) -> None:
    group = f"{unique('reg')}-{RUN}.differential.libvirt-operator.test"  # RUN: never a failed run's leftover

    def scenario(api: Api) -> JSON:
        crd = _widget_crd(group)
        name = crd["metadata"]["name"]
        created = api.post(CRDS_PATH, crd)
        wait_for(lambda: established(api, name), timeout=30, what=f"{api.name}: {name} Established")
        wait_for(lambda: served(api, f"/apis/{group}/v1/widgets"), timeout=30, what=f"{api.name}: widgets served")
        stored = api.ok("GET", f"{CRDS_PATH}/{name}")
        conditions = {c["type"]: (c["status"], c["reason"]) for c in stored["status"]["conditions"]}
        widget = api.post(f"/apis/{group}/v1/widgets", {"apiVersion": f"{group}/v1", "kind": "Widget",
                                                       "metadata": {"name": "w1"}, "spec": {"size": 1}})
        deleted = api.delete(f"{CRDS_PATH}/{name}")
        wait_for(lambda: api.get(f"{CRDS_PATH}/{name}").status == 404, timeout=30,
                 what=f"{api.name}: {name} gone")
        wait_for(lambda: api.get(f"/apis/{group}/v1/widgets").status == 404, timeout=30,
                 what=f"{api.name}: widgets no longer served")
        return {
            "created": created.summary(),
            "spec": normalise(stored["spec"]),
            "acceptedNames": stored["status"]["acceptedNames"],
            "storedVersions": stored["status"]["storedVersions"],
            "conditions": conditions,
            "widget": widget.summary(),
            "deleted": deleted.summary(),
            "deleted metadata": normalise(deleted.body["metadata"]),
            "terminating": [normalise(c) for c in deleted.body["status"]["conditions"] if c["type"] == "Terminating"],
        }

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)
