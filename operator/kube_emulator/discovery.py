"""Discovery documents (/version, /api, /apis, group and version resource lists) and OpenAPI v3.

Aggregated discovery (apidiscovery.k8s.io/v2) is not served: clients that ask for it (kubectl)
get the plain APIVersions/APIGroupList and fall back to the per-version lists, as they do with
older servers.

OpenAPI v3 is served just far enough for kubectl: every PATCH operation declares the
`fieldValidation` query parameter, so kubectl leaves validation to this server
(`fieldValidation=Strict`) instead of downloading schemas; no PATCH operation lists the
strategic-merge media type, so kubectl computes strategic patches for core kinds from its compiled-in
types and JSON merge patches for custom resources, exactly as with a real server. The CRD schemas
are included as components, which is what `kubectl explain` reads.

OpenAPI v2 (`/openapi/v2`) is served as JSON only, with the same paths and `fieldValidation`
parameters; its definitions are the CRD schemas as given and bare objects for the builtin kinds.
client-go asks for it in protobuf only when OpenAPI v3 does not answer for a kind (it never needs to
here) and gets 406 Not Acceptable, as kube-apiserver answers an Accept it cannot serve.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
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
    """Definition names as kube-apiserver's: the Go package for builtins, the reversed group for CRDs."""
    if res.is_custom:
        prefix = ".".join(reversed(res.group.split(".")))
    elif res.group == "apiextensions.k8s.io":
        prefix = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions"
    else:
        prefix = f"io.k8s.api.{res.group.split('.')[0] if res.group else 'core'}"
    return f"{prefix}.{res.version}.{res.kind}"


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


Operation = Callable[..., JSON]


def _paths(res: Resource, operation: Operation = _operation, param: Callable[..., JSON] = _param,
           definitions: str = "#/components/schemas") -> JSON:
    """The paths of one resource; `operation` and `param` give them in OpenAPI v3 or Swagger 2.0 form."""
    prefix = "/" + _gv_path(res.group, res.version)
    base = f"{prefix}/namespaces/{{namespace}}/{res.plural}" if res.namespaced else f"{prefix}/{res.plural}"
    ref = {"$ref": f"{definitions}/{_schema_name(res)}"}
    scope = "Namespaced" if res.namespaced else ""
    write = ("dryRun", "fieldManager", "fieldValidation")
    patch_types = ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")
    path_params = [param("namespace", "path")] if res.namespaced else []
    item: JSON = {
        "get": operation(res, "get", f"read{scope}{res.kind}", ref),
        "put": operation(res, "put", f"replace{scope}{res.kind}", ref, ("application/json",), write),
        "patch": operation(res, "patch", f"patch{scope}{res.kind}", ref, patch_types, (*write, "force")),
        "delete": operation(res, "delete", f"delete{scope}{res.kind}", ref, ("application/json",), ("dryRun",)),
        "parameters": [param("name", "path"), *path_params],
    }
    collection: JSON = {
        "get": operation(res, "list", f"list{scope}{res.kind}", ref),
        "post": operation(res, "post", f"create{scope}{res.kind}", ref, ("application/json",), write),
        "parameters": path_params,
    }
    paths = {base: collection, f"{base}/{{name}}": item}
    if res.status_subresource:
        status = dict(item)
        status.pop("delete")
        status["patch"] = operation(res, "patch", f"patch{scope}{res.kind}Status", ref, patch_types,
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


# --- OpenAPI v2 --------------------------------------------------------------------------------------

OPENAPI_V2_JSON = "application/json"


def _v2_param(name: str, where: str = "query") -> JSON:
    return {"name": name, "in": where, "required": where == "path", "type": "string", "uniqueItems": True}


def _v2_operation(res: Resource, action: str, op_id: str, ref: JSON, body_types: tuple[str, ...] = (),
                  query: tuple[str, ...] = ()) -> JSON:
    params = [_v2_param(q) for q in query]
    if body_types:
        params.append({"name": "body", "in": "body", "required": True, "schema": ref})
    op: JSON = {
        "operationId": op_id,
        "tags": [f"{res.group or 'core'}_{res.version}"],
        "produces": ["application/json"],
        "schemes": ["https"],
        "parameters": params,
        "responses": {"200": {"description": "OK", "schema": ref}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": res.group, "kind": res.kind, "version": res.version},
    }
    if body_types:
        op["consumes"] = list(body_types)
    return op


def openapi_v2(registry: Registry) -> JSON:
    """`/openapi/v2`: one Swagger 2.0 document of every served resource."""
    paths: JSON = {}
    definitions: JSON = {}
    for res in registry.all():
        paths.update(_paths(res, _v2_operation, _v2_param, "#/definitions"))
        definitions[_schema_name(res)] = _component(res)
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
            "paths": dict(sorted(paths.items())), "definitions": dict(sorted(definitions.items()))}


def accepts_openapi_v2_json(accept: str) -> bool:
    """Whether an Accept header admits the JSON form (kube-openapi reads a missing header as */*)."""
    if not accept.strip():
        return True
    for alternative in accept.split(","):
        media = alternative.split(";")[0].strip().lower()
        if media in ("application/json", "application/*", "*/*"):
            return True
    return False
