"""HTTP for resource requests: paths to targets, verbs, bodies in, content negotiation out.

Paths are read as kube-apiserver's RequestInfoFactory reads them:
`/api/v1[/namespaces/NS]/PLURAL[/NAME[/SUBRESOURCE]]` and the same under `/apis/GROUP/VERSION`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from kube_emulator import errors, patches, protobuf, selectors, table
from kube_emulator.objects import DeleteOptions, Objects, WriteOptions
from kube_emulator.resources import Registry, Resource
from kube_emulator.schema import Cause
from kube_emulator.watch import WatchRequest, WatchStream

JSON = dict[str, Any]
NAMESPACE_SUBRESOURCES = ("status", "finalize")
TRUE = ("true", "1")
PROTOBUF = "application/vnd.kubernetes.protobuf"
EVENT_FIELDS = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                "reason", "reportingComponent", "type")


@dataclass(frozen=True)
class Target:
    group: str
    version: str
    namespace: str | None
    plural: str
    name: str | None
    subresource: str | None

    @property
    def resource(self) -> str:
        return f"{self.plural}/{self.subresource}" if self.subresource else self.plural


def parse_target(path: str) -> Target | None:
    """The resource a path addresses; None for non-resource paths (discovery and the like)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in NAMESPACE_SUBRESOURCES:
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        return None
    return Target(group, version, namespace, rest[0], rest[1] if len(rest) > 1 else None,
                  rest[2] if len(rest) > 2 else None)


def verb_of(method: str, target: Target, query: Mapping[str, str]) -> str:
    if method == "GET":
        if query.get("watch", "").lower() in TRUE:
            return "watch"
        return "get" if target.name else "list"
    if method == "DELETE":
        return "delete" if target.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


# --- content negotiation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Representation:
    mode: str  # json | table | partial
    meta_version: str = "v1"  # meta.k8s.io version of a Table / PartialObjectMetadata


def negotiate(accept: str) -> Representation:
    """Pick the first alternative of `Accept` this server can write (JSON, Table, metadata only)."""
    if not accept.strip():
        return Representation("json")
    offered = []
    for alternative in accept.split(","):
        media, *raw_params = [p.strip() for p in alternative.split(";")]
        params = dict(p.split("=", 1) for p in raw_params if "=" in p)
        offered.append(media)
        if media not in ("application/json", "*/*", "application/*"):
            continue
        kind = params.get("as")
        if kind is None:
            return Representation("json")
        if params.get("g") != "meta.k8s.io" or params.get("v") not in ("v1", "v1beta1"):
            continue  # e.g. aggregated discovery: not served, the client falls back
        if kind == "Table":
            return Representation("table", params["v"])
        if kind in ("PartialObjectMetadata", "PartialObjectMetadataList"):
            return Representation("partial", params["v"])
    raise errors.not_acceptable(["application/json", "application/json;as=Table;v=v1;g=meta.k8s.io",
                                 "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"])


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None,
                  warnings: list[str] | None = None) -> web.Response:
    hdrs: CIMultiDict[str] = CIMultiDict(headers or {})
    for warning in warnings or ():
        hdrs.add("Warning", '299 - "' + warning.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status,
                        content_type="application/json", headers=hdrs)


def error_response(err: errors.ApiError) -> web.Response:
    return json_response(err.status(), err.code, err.headers)


# --- request bodies ----------------------------------------------------------------------------------


async def read_body(request: web.Request) -> tuple[str, Any, list[str]]:
    """The body's media type, its value and (JSON objects only) the paths of its duplicate fields."""
    content_type = request.content_type or "application/json"
    raw = await request.read()
    if not raw.strip():
        raise errors.bad_request("the body of the request was empty")
    if content_type == PROTOBUF and request.method in ("POST", "PUT"):
        return content_type, protobuf.decode(raw), []
    if "protobuf" in content_type:
        raise errors.unsupported_media_type(content_type, ["application/json", "application/yaml"])
    try:
        if content_type in (patches.APPLY_PATCH, "application/yaml", "application/x-yaml"):
            return content_type, yaml.safe_load(raw), []
        if request.method in ("POST", "PUT"):
            return (content_type, *_loads_noting_duplicates(raw))
        return content_type, json.loads(raw), []
    except (ValueError, yaml.YAMLError) as exc:
        raise errors.bad_request(f"error decoding the body of the request as {content_type}: {exc}") from None


class _Pairs(dict[str, Any]):
    """A JSON object as decoded, with the keys it had more than once (the last value wins)."""

    repeated: list[str]


def _pairs(items: list[tuple[str, Any]]) -> _Pairs:
    found = _Pairs(items)
    found.repeated = []
    seen: set[str] = set()
    for key, _ in items:
        if key in seen:
            found.repeated.append(key)
        seen.add(key)
    return found


def _loads_noting_duplicates(raw: bytes) -> tuple[Any, list[str]]:
    """JSON with plain dicts, and the paths of duplicate fields as kube's strict decoder names them."""
    duplicates: list[str] = []

    def plain(value: Any, path: str) -> Any:
        if isinstance(value, _Pairs):
            duplicates.extend(f"{path}.{k}" if path else k for k in dict.fromkeys(value.repeated))
            return {k: plain(v, f"{path}.{k}" if path else k) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    return plain(json.loads(raw, object_pairs_hook=_pairs), ""), duplicates


async def _optional_json(request: web.Request) -> Any:
    """A DELETE's optional DeleteOptions body (JSON, or protobuf from typed clients)."""
    raw = await request.read() if request.can_read_body else b""
    if not raw.strip():
        return None
    if request.content_type == PROTOBUF:
        return protobuf.decode(raw)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise errors.bad_request(f"error decoding DeleteOptions: {exc}") from None


def _options_invalid(kind: str, causes: list[Cause]) -> errors.ApiError:
    """A 422 on the request's options, as kube-apiserver's `XOptions.meta.k8s.io "" is invalid`."""
    return errors.invalid(kind, "meta.k8s.io", "", causes)


def write_options(query: MultiMapping[str], kind: str, content_type: str = "") -> WriteOptions:
    """Create/Update/PatchOptions from the query (kind names them in errors), validated as kube's."""
    causes: list[Cause] = []
    if content_type == patches.APPLY_PATCH and not query.get("fieldManager"):
        causes.append(Cause("FieldValueRequired", "Required value: is required for apply patch", "fieldManager"))
    elif kind == "PatchOptions" and content_type != patches.APPLY_PATCH and "force" in query:
        causes.append(Cause("FieldValueForbidden", "Forbidden: may not be specified for non-apply patch", "force"))
    dry_run = _dry_run(query.getall("dryRun", []), causes)
    directive = query.get("fieldValidation", "")
    if directive not in ("", "Ignore", "Strict", "Warn"):
        causes.append(Cause("FieldValueNotSupported", f"Unsupported value: {json.dumps(directive)}: supported "
                                                      'values: "", "Ignore", "Strict", "Warn"', "fieldValidation"))
    if causes:
        raise _options_invalid(kind, causes)
    return WriteOptions(dry_run=dry_run, field_validation=directive or "Warn")


def _dry_run(values: Any, causes: list[Cause]) -> bool:
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    if any(value != "All" for value in flat):
        causes.append(Cause("FieldValueNotSupported", f'Unsupported value: {json.dumps(flat, separators=(",", ":"))}'
                                                      ': supported values: "All"', "dryRun"))
    return bool(flat)


def delete_options(query: MultiMapping[str], body: Any) -> DeleteOptions:
    body = body if isinstance(body, Mapping) else {}
    grace: Any = body.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
    policy = body.get("propagationPolicy", query.get("propagationPolicy"))
    causes: list[Cause] = []
    if policy is not None and policy not in ("Orphan", "Background", "Foreground"):
        causes.append(Cause("FieldValueNotSupported", f"Unsupported value: {json.dumps(policy)}: supported values: "
                                                      '"Foreground", "Background", "Orphan", "nil"',
                            "propagationPolicy"))
    try:
        grace_seconds = int(grace) if grace is not None else None
    except (TypeError, ValueError):
        raise errors.bad_request(f'invalid gracePeriodSeconds: "{grace}"') from None
    dry_run = _dry_run(body.get("dryRun") or query.getall("dryRun", []), causes)
    if causes:
        raise _options_invalid("DeleteOptions", causes)
    return DeleteOptions(grace_period_seconds=grace_seconds, propagation_policy=policy,
                         preconditions=body.get("preconditions") or {}, dry_run=dry_run)


def _go_parse_uint(text: str) -> str | None:
    """What Go's strconv.ParseUint says is wrong with `text` (None: nothing)."""
    if not text.isascii() or not text.isdigit():
        return f'strconv.ParseUint: parsing "{text}": invalid syntax'
    if int(text) >= 2**64:
        return f'strconv.ParseUint: parsing "{text}": value out of range'
    return None


def list_options(query: Mapping[str, str], *, watch: bool) -> bool:
    """ListOptions checked as kube-apiserver's ValidateListOptions; returns whether a watch sends its
    initial events (kube 1.34 makes a watch without resourceVersion, or from "0", a watch-list)."""
    rv = query.get("resourceVersion", "")
    problem = _go_parse_uint(rv) if rv else None
    if problem is not None:
        detail = f"resourceVersion: Invalid value: {json.dumps(rv)}: {problem}"
        if watch:  # the watch path reports it as an internal error, without a reason
            raise errors.ApiError(500, detail, None)
        raise errors.bad_request(f"invalid resource version: {detail}")
    match = query.get("resourceVersionMatch", "")
    send_initial = query.get("sendInitialEvents")
    causes: list[Cause] = []

    def forbidden(field: str, why: str) -> None:
        causes.append(Cause("FieldValueForbidden", f"Forbidden: {why}", field))

    def not_supported(supported: str) -> None:
        causes.append(Cause("FieldValueNotSupported", f"Unsupported value: {json.dumps(match)}: supported values: "
                                                      f"{supported}", "resourceVersionMatch"))

    if watch:
        if send_initial is not None and match != "NotOlderThan":
            forbidden("resourceVersionMatch", "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
        if match:
            if send_initial is None:
                forbidden("resourceVersionMatch",
                          "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided")
            if match != "NotOlderThan":
                not_supported('"NotOlderThan"')
            if query.get("continue"):
                forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided")
    else:
        if match:
            if not rv:
                forbidden("resourceVersionMatch",
                          "resourceVersionMatch is forbidden unless resourceVersion is provided")
            if query.get("continue"):
                forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided")
            if match not in ("Exact", "NotOlderThan"):
                not_supported('"Exact", "NotOlderThan", ""')
            if match == "Exact" and rv == "0":
                forbidden("resourceVersionMatch", 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"')
        if send_initial is not None:
            forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list")
    if causes:
        raise errors.invalid("ListOptions", "meta.k8s.io", "", causes)
    if send_initial is None:
        return watch and rv in ("", "0") and not match
    return send_initial.lower() in TRUE


# --- selectors and paging ----------------------------------------------------------------------------


def supported_fields(res: Resource) -> dict[str, str]:
    """Field-selector paths this resource accepts -> the stored object's paths."""
    fields = {"metadata.name": "metadata.name", "metadata.namespace": "metadata.namespace"}
    if res.storage_key == ("", "events"):
        for path in EVENT_FIELDS:
            fields[path] = path
            head, dot, rest = path.partition(".")
            fields[res.renames.get(head, head) + dot + rest] = path  # regarding.name for events.k8s.io
        fields["source"] = "source.component"
    elif res.plural == "namespaces" and not res.group:
        fields["status.phase"] = "status.phase"
    elif res.plural == "nodes" and not res.group:
        fields["spec.unschedulable"] = "spec.unschedulable"
    elif res.is_custom:
        for path in res.selectable_fields:
            fields[path] = path
    return fields


def predicate_for(res: Resource, query: Mapping[str, str], name: str | None = None) -> Any:
    fields = supported_fields(res)
    label_pred = selectors.label_predicate(query.get("labelSelector"))
    field_pred = selectors.field_predicate(query.get("fieldSelector"), fields, fields.__getitem__)
    name_pred = (lambda obj: obj["metadata"]["name"] == name) if name else None
    return selectors.combine(label_pred, field_pred, name_pred)


def _encode_continue(rv: str, last: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps({"rv": rv, "start": list(last)}).encode()).decode()


def _decode_continue(token: str) -> tuple[str, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(data["start"][0]), str(data["start"][1])
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        raise errors.bad_request("continue key is not valid: incorrect encoded start resourceVersion") from None


# --- the handler -------------------------------------------------------------------------------------


class ResourceHandler:
    def __init__(self, objects: Objects, registry: Registry, bookmark_interval: float) -> None:
        self.objects = objects
        self.registry = registry
        self.bookmark_interval = bookmark_interval

    def resolve(self, target: Target) -> Resource:
        res = self.registry.get(target.group, target.version, target.plural)
        if res is None:
            raise errors.page_not_found()
        if target.namespace is not None and not res.namespaced:
            raise errors.page_not_found()
        allowed = (None, "status") if res.status_subresource else (None,)
        if target.subresource not in allowed and not (target.subresource == "finalize" and
                                                      "finalize" in res.extra_subresources):
            raise errors.page_not_found()
        return res

    async def handle(self, request: web.Request, target: Target, verb: str) -> web.StreamResponse:
        res = self.resolve(target)
        query = request.query
        rep = negotiate(request.headers.get("Accept", ""))
        namespace = target.namespace if res.namespaced else None
        if target.subresource == "finalize":
            target = Target(target.group, target.version, target.namespace, target.plural, target.name, None)
        if verb == "deletecollection" and res.namespaced and namespace is None:
            raise errors.method_not_allowed()
        if verb == "create":
            if target.name or (res.namespaced and namespace is None):
                raise errors.method_not_allowed()
            _, body, duplicates = await read_body(request)
            opts = write_options(query, "CreateOptions")
            opts.duplicate_fields = duplicates
            new_obj = self.objects.create(res, namespace or "", body, opts)
            return self._object_response(res, new_obj, rep, query, 201, opts.warnings)
        if verb == "list":
            list_options(query, watch=False)
            return self._list(res, namespace, query, rep)
        if verb == "watch":
            return await self._watch(request, res, namespace, target.name, query, rep)
        if verb == "deletecollection":
            options = delete_options(query, await _optional_json(request))
            predicate = predicate_for(res, query)
            deleted = self.objects.delete_collection(res, namespace, predicate, options)
            listed = [res.from_storage(o) for o in deleted]
            return json_response({"kind": res.list_kind, "apiVersion": res.api_version,
                                  "metadata": {"resourceVersion": self.objects.store.resource_version},
                                  "items": listed})
        assert target.name is not None
        if res.namespaced and namespace is None:
            raise errors.page_not_found()
        if verb == "get":
            found = self.objects.get(res, namespace or "", target.name)
            return self._object_response(res, found, rep, query)
        if verb == "update":
            _, body, duplicates = await read_body(request)
            opts = write_options(query, "UpdateOptions")
            opts.duplicate_fields = duplicates
            stored, created = self.objects.update(res, namespace or "", target.name, body, target.subresource, opts)
            return self._object_response(res, stored, rep, query, 201 if created else 200, opts.warnings)
        if verb == "patch":
            content_type, body, _ = await read_body(request)
            opts = write_options(query, "PatchOptions", content_type)
            stored, created = self.objects.patch(res, namespace or "", target.name, content_type, body,
                                                 target.subresource, opts)
            return self._object_response(res, stored, rep, query, 201 if created else 200, opts.warnings)
        if verb == "delete":
            if target.subresource:
                raise errors.method_not_allowed()
            options = delete_options(query, await _optional_json(request))
            current, gone = self.objects.delete(res, namespace or "", target.name, options)
            if gone:  # custom resources too: kube answers with the object only while it waits for finalizers
                return json_response(errors.success_status(name=target.name, group=res.group, kind=res.plural,
                                                           uid=current["metadata"]["uid"]))
            return self._object_response(res, current, rep, query)
        raise errors.method_not_allowed()

    # --- rendering ---

    def _columns(self, res: Resource) -> list[table.ColumnSpec]:
        if res.is_custom:
            return table.column_specs_for_crd_version({"additionalPrinterColumns": list(res.printer_columns)})
        return table.columns_for_builtin(res.plural)

    def _include(self, query: Mapping[str, str]) -> str:
        chosen = query.get("includeObject") or table.INCLUDE_METADATA
        if chosen not in (table.INCLUDE_NONE, table.INCLUDE_METADATA, table.INCLUDE_OBJECT):
            raise errors.bad_request(f'includeObject: Unsupported value: "{chosen}"')
        return chosen

    def _object_response(self, res: Resource, stored: JSON, rep: Representation, query: Mapping[str, str],
                         status: int = 200, warnings: list[str] | None = None) -> web.Response:
        obj = res.from_storage(stored)
        if rep.mode == "table":
            body = table.render_table(self._columns(res), [obj], include_object=self._include(query),
                                      resource_version=stored["metadata"].get("resourceVersion", ""))
            body["apiVersion"] = f"meta.k8s.io/{rep.meta_version}"
            return json_response(body, status, warnings=warnings)
        if rep.mode == "partial":
            obj = {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{rep.meta_version}",
                   "metadata": obj["metadata"]}
        return json_response(obj, status, warnings=warnings)

    def _list(self, res: Resource, namespace: str | None, query: Mapping[str, str],
              rep: Representation) -> web.Response:
        store = self.objects.store
        predicate = predicate_for(res, query)
        items = [o for o in store.objects_of(res.storage_key, namespace) if predicate is None or predicate(o)]
        rv = store.resource_version
        token = query.get("continue")
        if token:
            start = _decode_continue(token)
            items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start]
        # An unstructured list (custom resources) carries an empty `continue`, a typed one omits it.
        meta: JSON = {"continue": "", "resourceVersion": rv} if res.is_custom else {"resourceVersion": rv}
        limit = int(query.get("limit") or 0) if (query.get("limit") or "0").isdigit() else 0
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            meta["continue"] = _encode_continue(rv, (last.get("namespace", ""), last["name"]))
            if predicate is None:  # kube counts what is left only when no selector filters it
                meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        shown = [res.from_storage(o) for o in items]
        if rep.mode == "table":
            body = table.render_table(self._columns(res), shown, include_object=self._include(query),
                                      resource_version=rv, continue_token=meta.get("continue", ""))
            body["apiVersion"] = f"meta.k8s.io/{rep.meta_version}"
            return json_response(body)
        if rep.mode == "partial":
            partial = [{"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{rep.meta_version}",
                        "metadata": o["metadata"]} for o in shown]
            return json_response({"kind": "PartialObjectMetadataList",
                                  "apiVersion": f"meta.k8s.io/{rep.meta_version}", "metadata": meta,
                                  "items": partial})
        if not res.is_custom:
            # Typed lists leave their items' apiVersion/kind empty, which JSON omits.
            shown = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in shown]
        return json_response({"kind": res.list_kind, "apiVersion": res.api_version, "metadata": meta,
                              "items": shown})

    async def _watch(self, request: web.Request, res: Resource, namespace: str | None, name: str | None,
                     query: Mapping[str, str], rep: Representation) -> web.StreamResponse:
        timeout_text = query.get("timeoutSeconds")
        try:
            timeout = float(timeout_text) if timeout_text else None
        except ValueError:
            raise errors.bad_request(f'invalid timeoutSeconds: "{timeout_text}"') from None
        watch_req = WatchRequest(
            res=res,
            namespace=namespace,
            predicate=predicate_for(res, query, name),
            resource_version=query.get("resourceVersion"),
            bookmarks=query.get("allowWatchBookmarks", "").lower() in TRUE,
            send_initial_events=list_options(query, watch=True),
            timeout=timeout,
            table_columns=self._columns(res) if rep.mode == "table" else None,
            table_version=rep.meta_version,
            include_object=self._include(query),
        )
        return await WatchStream(self.objects.store, watch_req, self.bookmark_interval).serve(request)
