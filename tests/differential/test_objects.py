"""Writes to custom objects: CRUD, generateName, the status subresource, generation, conflicts,
finalizers, delete options, validation and field validation, server-side apply."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.differential.conftest import DM, DM_PLURAL, GADGET_PLURAL, GADGETS, NS, both, dm, gadget, ns_path
from tests.differential.target import APPLY, JSON_PATCH, Api, Reply, assert_same, normalise

JSON = dict[str, Any]
Names = Callable[[str], str]


def path(name: str = "", namespace: str = NS) -> str:
    return ns_path(DM, DM_PLURAL, name, namespace)


def answer(reply: Reply) -> JSON:
    """Code, kind, reason and causes, the message, and the normalised body of a non-Status answer."""
    found = reply.summary()
    body = reply.body if reply.text.startswith("{") else None
    if isinstance(body, dict):
        if body.get("kind") == "Status":
            found["message"] = normalise(body.get("message"))
            found["details"] = normalise(body.get("details"))
        else:
            found["body"] = normalise(body)
    return found


def test_create_get_list_update_patch_delete(apis: tuple[Api, Api], unique: Names) -> None:
    name = unique("vm")

    def scenario(api: Api) -> list[JSON]:
        steps = [answer(api.post(path(), dm(name)))]
        got = api.get(path(name))
        steps.append(answer(got))
        listed = api.get(path(), query={"labelSelector": f"test={name}"})
        steps.append(answer(listed))
        current = got.body
        current["spec"]["cpu"] = {"cores": 2}
        current["metadata"]["labels"] = {"test": name}
        steps.append(answer(api.put(path(name), current)))
        steps.append(answer(api.get(path(), query={"labelSelector": f"test={name}"})))
        steps.append(answer(api.patch(path(name), {"spec": {"runStrategy": "Halted"}})))
        steps.append(answer(api.patch(path(name), [{"op": "replace", "path": "/spec/paused", "value": True}],
                                      JSON_PATCH)))
        steps.append(answer(api.patch(path(name), [{"op": "test", "path": "/spec/paused", "value": False}],
                                      JSON_PATCH)))
        steps.append(answer(api.delete(path(name))))
        steps.append(answer(api.get(path(name))))
        steps.append(answer(api.delete(path(name))))
        steps.append(answer(api.patch(path(name), {"spec": {"paused": False}})))
        return steps

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def test_requests_in_a_missing_namespace(apis: tuple[Api, Api], unique: Names) -> None:
    missing = unique("nowhere")

    def scenario(api: Api) -> list[JSON]:
        return [answer(api.post(path(namespace=missing), {**dm("x"), "metadata": {"name": "x"}})),
                answer(api.get(path("x", missing))),
                answer(api.get(path(namespace=missing)))]

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def test_generate_name(apis: tuple[Api, Api], unique: Names) -> None:
    prefix = unique("gen") + "-"

    def scenario(api: Api) -> list[JSON]:
        body = dm("")
        body["metadata"] = {"generateName": prefix}
        first, second = api.post(path(), body), api.post(path(), body)
        assert first.body["metadata"]["name"] != second.body["metadata"]["name"]
        without = api.post(path(), {**body, "metadata": {}})
        return [answer(first), answer(second), answer(without)]

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def test_status_subresource_and_generation(apis: tuple[Api, Api], unique: Names) -> None:
    name = unique("vm")

    def scenario(api: Api) -> list[JSON]:
        created = api.post(path(), {**dm(name), "status": {"phase": "Running"}})
        steps = [answer(created)]
        current = created.body
        # /status: only status changes, generation stays
        current["status"] = {"phase": "Starting", "message": "booting"}
        current["spec"]["cpu"] = {"cores": 4}
        steps.append(answer(api.put(path(name) + "/status", current)))
        steps.append(answer(api.patch(path(name) + "/status", {"status": {"phase": "Running"},
                                                               "spec": {"paused": True}})))
        # the main resource: status is ignored, a spec change moves generation, metadata does not
        steps.append(answer(api.patch(path(name), {"status": {"phase": "Failed"}, "spec": {"paused": True}})))
        steps.append(answer(api.patch(path(name), {"metadata": {"labels": {"a": "b"}}})))
        steps.append(answer(api.patch(path(name), {"status": {"phase": "Failed"}})))
        steps.append(answer(api.get(path(name) + "/status")))
        return steps

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def test_an_unchanged_update_keeps_the_resource_version(apis: tuple[Api, Api], unique: Names) -> None:
    name = unique("vm")

    def scenario(api: Api) -> list[bool]:
        created = api.ok("POST", path(), dm(name))
        same = api.ok("PATCH", path(name), {"spec": {"nodeName": "node-a"}},
                      content_type="application/merge-patch+json")
        put = api.ok("PUT", path(name), created)
        changed = api.ok("PATCH", path(name), {"spec": {"nodeName": "node-b"}},
                         content_type="application/merge-patch+json")
        rv = created["metadata"]["resourceVersion"]
        return [same["metadata"]["resourceVersion"] == rv, put["metadata"]["resourceVersion"] == rv,
                changed["metadata"]["resourceVersion"] == rv]

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)
    assert real == [True, True, False]


def test_conflicts(apis: tuple[Api, Api], unique: Names) -> None:
    name = unique("vm")

    def scenario(api: Api) -> list[JSON]:
        created = api.ok("POST", path(), dm(name))
        api.ok("PATCH", path(name), {"spec": {"paused": True}}, content_type="application/merge-patch+json")
        stale = dict(created, spec={**created["spec"], "paused": False})
        no_rv = {**stale, "metadata": {k: v for k, v in stale["metadata"].items() if k != "resourceVersion"}}
        return [answer(api.post(path(), dm(name))),
                answer(api.put(path(name), stale)),
                answer(api.put(path(name) + "/status", stale)),
                answer(api.patch(path(name), {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
                                              "spec": {"paused": False}})),
                answer(api.put(path(name), no_rv))]

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def test_finalizers_and_deletion_timestamp(apis: tuple[Api, Api], unique: Names) -> None:
    name = unique("vm")

    def scenario(api: Api) -> list[JSON]:
        body = dm(name)
        body["metadata"]["finalizers"] = ["example.com/keep", "example.com/second"]
        steps = [answer(api.post(path(), body))]
        steps.append(answer(api.delete(path(name))))
        steps.append(answer(api.get(path(name))))
        steps.append(answer(api.delete(path(name))))  # again: still there, unchanged
        added = {"metadata": {"finalizers": ["example.com/keep", "example.com/new"]}}
        steps.append(answer(api.patch(path(name), added)))
        steps.append(answer(api.patch(path(name), {"spec": {"paused": True}})))  # spec may still change
        steps.append(answer(api.patch(path(name), {"metadata": {"finalizers": ["example.com/keep"]}})))
        steps.append(answer(api.patch(path(name), {"metadata": {"finalizers": None}})))
        steps.append(answer(api.get(path(name))))
        return steps

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def _rv_free(text: str, *values: str) -> str:
    for value in values:
        text = text.replace(value, "<rv>")
    return text


def test_delete_preconditions_and_dry_run(apis: tuple[Api, Api], unique: Names) -> None:
    name = unique("vm")

    def scenario(api: Api) -> list[JSON]:
        created = api.ok("POST", path(), dm(name))
        meta = created["metadata"]
        wrong_uid = {"kind": "DeleteOptions", "apiVersion": "v1",
                     "preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}}
        wrong_rv = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": "1"}}
        steps = [answer(api.delete(path(name), wrong_uid)), answer(api.delete(path(name), wrong_rv))]
        steps[1]["message"] = _rv_free(steps[1]["message"], meta["resourceVersion"])
        steps.append(answer(api.delete(path(name), query={"dryRun": "All"})))
        steps.append(answer(api.delete(path(name), {"dryRun": ["All"]})))
        steps.append(answer(api.get(path(name))))
        steps.append(answer(api.delete(path(name), query={"dryRun": "Some"})))
        steps.append(answer(api.delete(path(name), {"propagationPolicy": "Sometimes"})))
        right = {"preconditions": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
                 "propagationPolicy": "Background"}
        steps.append(answer(api.delete(path(name), right)))
        steps.append(answer(api.get(path(name))))
        return steps

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def test_dry_run_create_and_update_store_nothing(apis: tuple[Api, Api], unique: Names) -> None:
    name = unique("vm")

    def scenario(api: Api) -> list[JSON]:
        steps = [answer(api.post(path(), dm(name), query={"dryRun": "All"})), answer(api.get(path(name)))]
        created = api.ok("POST", path(), dm(name))
        steps.append(answer(api.patch(path(name), {"spec": {"paused": True}}, query={"dryRun": "All"})))
        steps.append(answer(api.get(path(name))))
        steps.append({"rv kept": api.ok("GET", path(name))["metadata"]["resourceVersion"] ==
                      created["metadata"]["resourceVersion"]})
        return steps

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def test_delete_propagation_policies(apis: tuple[Api, Api], unique: Names) -> None:
    def scenario(api: Api) -> list[JSON]:
        steps = []
        for policy in ("Orphan", "Foreground"):
            name = unique(policy.lower())
            api.ok("POST", path(), dm(name))
            steps.append(answer(api.delete(path(name), {"propagationPolicy": policy})))
        return steps

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def test_schema_validation_errors_name_their_fields(apis: tuple[Api, Api], unique: Names) -> None:
    name = unique("vm")
    invalid_specs: list[JSON] = [
        {"nodeName": "Not_A_Node", "memory": "64Mi"},
        {"memory": "64Mi", "runStrategy": "Sometimes"},
        {"nodeName": "n", "memory": "64Mi", "cpu": {"cores": 0}},
        {"nodeName": "n", "memory": "64Mi", "cpu": {"cores": "two"}},
        {"nodeName": "n", "memory": "64Mi", "disks": [{"name": "a", "size": "1Gi", "bus": "ide"}]},
        {"nodeName": "n", "memory": "64Mi", "disks": [{"name": "a", "size": "1Gi"}, {"name": "a", "size": "2Gi"}]},
        {"nodeName": "n", "memory": "64Mi", "interfaces": [{"name": "a"}]},
        {"nodeName": "n", "memory": "64Mi", "paused": "yes"},
    ]

    def scenario(api: Api) -> list[JSON]:
        steps = []
        for spec in invalid_specs:
            body = dm(name)
            body["spec"] = spec
            steps.append(answer(api.post(path(), body)))
        no_spec = dm(name)
        del no_spec["spec"]
        steps.append(answer(api.post(path(), no_spec)))
        bad_name = dm("Bad_Name")
        steps.append(answer(api.post(path(), bad_name)))
        bad_label = dm(name)
        bad_label["metadata"]["labels"] = {"a": "not ok!"}
        steps.append(answer(api.post(path(), bad_label)))
        return steps

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def test_field_validation_strict_warn_ignore(apis: tuple[Api, Api], unique: Names) -> None:
    def scenario(api: Api) -> list[JSON]:
        steps = []
        for mode in ("Strict", "Warn", "Ignore", None, "Sloppy"):
            body = dm(unique(str(mode).lower()))
            body["spec"]["bogus"] = 1
            body["spec"]["cpu"] = {"cores": 1, "threads": 2}
            reply = api.post(path(), body, query={"fieldValidation": mode} if mode else None)
            steps.append({**answer(reply), "warnings": sorted(reply.warnings)})
        return steps

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def _apply(api: Api, name: str, manager: str, spec: JSON, force: bool = False) -> Reply:
    doc = {"apiVersion": dm(name)["apiVersion"], "kind": dm(name)["kind"],
           "metadata": {"name": name, "namespace": NS}, "spec": spec}
    query: JSON = {"fieldManager": manager}
    if force:
        query["force"] = "true"
    return api.patch(path(name), json.dumps(doc), APPLY, query=query)


def test_server_side_apply(apis: tuple[Api, Api], unique: Names) -> None:
    name = unique("vm")

    def scenario(api: Api) -> list[JSON]:
        steps = [answer(_apply(api, name, "alice", {"nodeName": "node-a", "memory": "64Mi", "runStrategy": "Halted"}))]
        steps.append(answer(_apply(api, name, "alice", {"nodeName": "node-a", "memory": "128Mi",
                                                        "runStrategy": "Halted"})))
        steps.append(answer(_apply(api, name, "bob", {"runStrategy": "Always"})))
        steps.append(answer(_apply(api, name, "bob", {"runStrategy": "Always"}, force=True)))
        steps.append(answer(_apply(api, name, "alice", {"nodeName": "node-a", "memory": "128Mi"})))
        steps.append(answer(api.patch(path(name), "{}", APPLY)))
        return steps

    real, emulated = both(apis, scenario)
    # Known difference (docs/emulator.md): no field ownership, so another manager's apply never conflicts.
    assert real[2]["code"] == 409 and real[2]["causes"] == [("FieldManagerConflict", ".spec.runStrategy")]
    assert real[2]["message"] == 'Apply failed with 1 conflict: conflict with "alice": .spec.runStrategy'
    assert emulated[2]["code"] == 200 and emulated[2]["body"]["spec"]["runStrategy"] == "Always"
    assert_same(real[:2] + real[3:], emulated[:2] + emulated[3:])


def test_gadget_schema_defaults_pruning_and_errors(apis: tuple[Api, Api], unique: Names) -> None:
    """The fixture CRD's schema features: defaults, pruning, preserved unknown fields, bounds, patterns,
    enums, list-map keys and maxItems."""
    name = unique("g")
    specs: list[JSON] = [
        {"color": "red", "parts": [{"name": "p1"}], "extra": {"anything": [1, {"x": None}]}, "bogus": True},
        {"color": "purple"},
        {"size": 3},
        {"color": "red", "size": 0},
        {"color": "red", "size": 11},
        {"color": "red", "size": 2.5},
        {"color": "red", "label": "Not-Lower"},
        {"color": "red", "parts": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}]},
        {"color": "red", "parts": [{"name": "a"}, {"name": "a", "bus": "sata"}]},
        {"color": "red", "parts": [{"bus": "sata"}]},
        {"color": "red", "parts": [{"name": "a", "bus": "ide"}]},
    ]

    def scenario(api: Api) -> list[JSON]:
        steps = []
        for index, spec in enumerate(specs):
            body = gadget(f"{name}-{index}")
            body["spec"] = spec
            steps.append(answer(api.post(ns_path(GADGETS, GADGET_PLURAL), body)))
        return steps

    real, emulated = both(apis, scenario)
    assert real[0]["code"] == 201 and real[0]["body"]["spec"]["size"] == 1
    assert_same(real, emulated)


def test_strict_field_validation_names_every_unknown_and_duplicate_field(apis: tuple[Api, Api],
                                                                        unique: Names) -> None:
    def scenario(api: Api) -> list[JSON]:
        steps = []
        body = dm(unique("meta"))
        body["metadata"]["bogus"] = "x"
        body["spec"]["bogus"] = 1
        body["spec"]["disks"] = [{"name": "d", "size": "1Gi", "color": "red"}]
        body["status"] = {"phase": "Running", "unknown": 1}
        for mode in ("Strict", "Warn"):
            reply = api.post(path(), body, query={"fieldValidation": mode})
            steps.append({**answer(reply), "warnings": sorted(reply.warnings)})
            body["metadata"]["name"] = unique("meta-warn")
        duplicated = json.dumps(dm(unique("dup"))).replace('"memory": "64Mi"', '"memory": "64Mi", "memory": "32Mi"')
        for mode in ("Strict", "Warn"):
            reply = api.post(path(), duplicated, query={"fieldValidation": mode})
            steps.append({**answer(reply), "warnings": sorted(reply.warnings)})
            duplicated = duplicated.replace(unique("dup"), unique("dup-warn"))
        return steps

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)


def test_delete_with_a_grace_period_while_finalizers_remain(apis: tuple[Api, Api], unique: Names) -> None:
    name = unique("vm")

    def scenario(api: Api) -> list[JSON]:
        body = dm(name)
        body["metadata"]["finalizers"] = ["example.com/keep"]
        api.ok("POST", path(), body)
        steps = [answer(api.delete(path(name), {"gracePeriodSeconds": 30})),
                 answer(api.delete(path(name), query={"gracePeriodSeconds": "5"}))]
        api.ok("PATCH", path(name), {"metadata": {"finalizers": None}}, content_type="application/merge-patch+json")
        return steps

    real, emulated = both(apis, scenario)
    assert_same(real, emulated)
