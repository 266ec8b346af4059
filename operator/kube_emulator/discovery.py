"""Discovery documents (/version, /api, /apis, group and version resource lists) and OpenAPI v3.

Aggregated discovery (apidiscovery.k8s.io/v2) is not served: clients that ask for it (kubectl)
get the plain APIVersions/APIGroupList and fall back to the per-version lists, as they do with
older servers.

OpenAPI v3 is served just far enough for kubectl: every PATCH operation declares the
`fieldValidation` query parameter, so kubectl leaves validation to this server
(`fieldValidation=Strict`) instead of downloading schemas; no PATCH operation lists the
strategic-merge media type, so kubectl computes strategic patches for core kinds from its compiled-in
types and JSON merge patches for custom resources, exactly as with a real server. The CRD schemas
are included as components, which is what `kubectl explain` reads. OpenAPI v2 is not served (404),
which kubectl tolerates when v3 answers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kube_emulator.resources import Registry, Resource

JSON = dict[str, Any]

SERVER_VERSION: JSON = {
    "major": "1",
    "minor": "34",
    "emulationMajor": "1",
    "emulationMinor": "34",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "33",
    "gitVersion": "v1.34.0-libvirt-operator-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-08-27T00:00:00Z",
    "goVersion": "go1.24.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions(address: str) -> JSON:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]}


def _group(name: str, versions: list[str]) -> JSON:
    listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": listed, "preferredVersion": listed[0]}


def api_group_list(registry: Registry) -> JSON:
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group(name, versions) for name, versions in registry.groups()]}


def api_group(registry: Registry, name: str) -> JSON | None:
    for group, versions in registry.groups():
        if group == name:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}
    return None


def resource_list(registry: Registry, group: str, version: str) -> JSON | None:
    resources = registry.in_version(group, version)
    if not resources:
        return None
    entries = [entry for res in resources for entry in res.discovery()]
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": entries}


# --- OpenAPI v3 --------------------------------------------------------------------------------------


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _schema_name(res: Resource) -> str:
    reversed_group = ".".join(reversed(res.group.split("."))) if res.group else "io.k8s.api.core"
    return f"{reversed_group}.{res.version}.{res.kind}"


def _param(name: str, where: str = "query") -> JSON:
    return {"name": name, "in": where, "required": where == "path", "schema": {"type": "string",
                                                                               "uniqueItems": True}}


def _operation(res: Resource, action: str, op_id: str, ref: JSON, body_types: tuple[str, ...] = (),
               query: tuple[str, ...] = ()) -> JSON:
    op: JSON = {
        "operationId": op_id,
        "tags": [f"{res.group or 'core'}_{res.version}"],
        "parameters": [_param(q) for q in query],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": res.group, "kind": res.kind, "version": res.version},
    }
    if body_types:
        op["requestBody"] = {"required": True, "content": {t: {"schema": ref} for t in body_types}}
    return op


def _paths(res: Resource) -> JSON:
    prefix = "/" + _gv_path(res.group, res.version)
    base = f"{prefix}/namespaces/{{namespace}}/{res.plural}" if res.namespaced else f"{prefix}/{res.plural}"
    ref = {"$ref": f"#/components/schemas/{_schema_name(res)}"}
    scope = "Namespaced" if res.namespaced else ""
    write = ("dryRun", "fieldManager", "fieldValidation")
    patch_types = ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")
    path_params = [_param("namespace", "path")] if res.namespaced else []
    item: JSON = {
        "get": _operation(res, "get", f"read{scope}{res.kind}", ref),
        "put": _operation(res, "put", f"replace{scope}{res.kind}", ref, ("application/json",), write),
        "patch": _operation(res, "patch", f"patch{scope}{res.kind}", ref, patch_types, (*write, "force")),
        "delete": _operation(res, "delete", f"delete{scope}{res.kind}", ref, ("application/json",), ("dryRun",)),
        "parameters": [_param("name", "path"), *path_params],
    }
    collection: JSON = {
        "get": _operation(res, "list", f"list{scope}{res.kind}", ref),
        "post": _operation(res, "post", f"create{scope}{res.kind}", ref, ("application/json",), write),
        "parameters": path_params,
    }
    paths = {base: collection, f"{base}/{{name}}": item}
    if res.status_subresource:
        status = dict(item)
        status.pop("delete")
        status["patch"] = _operation(res, "patch", f"patch{scope}{res.kind}Status", ref, patch_types,
                                     (*write, "force"))
        paths[f"{base}/{{name}}/status"] = status
    return paths


def _component(res: Resource) -> JSON:
    body: JSON = dict(res.schema) if isinstance(res.schema, Mapping) else {"type": "object"}
    body["x-kubernetes-group-version-kind"] = [{"group": res.group, "kind": res.kind, "version": res.version}]
    return body


def openapi_v3_document(registry: Registry, group: str, version: str) -> JSON | None:
    resources = registry.in_version(group, version)
    if not resources:
        return None
    paths: JSON = {}
    for res in resources:
        paths.update(_paths(res))
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {_schema_name(r): _component(r) for r in resources}},
    }


def openapi_v3_index(registry: Registry) -> JSON:
    """`/openapi/v3`: one entry per group-version, its URL carrying a hash of its document."""
    paths: JSON = {}
    versions = [("", "v1")] + [(g, v) for g, vs in registry.groups() for v in vs]
    for group, version in versions:
        doc = openapi_v3_document(registry, group, version)
        digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()
        key = _gv_path(group, version)
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}
