"""What create, update, patch and delete do to objects, independent of HTTP.

Objects enter and leave here in their stored representation (see `Resource.to_storage`). The rules
are kube-apiserver's generic registry and strategies, for the kinds this emulator serves:

- system metadata (uid, creationTimestamp, generation, resourceVersion) is the server's;
- with a status subresource, writes to the main resource keep the stored status and writes to
  `/status` keep everything but the status; `generation` moves when anything but metadata and
  status changes (any non-metadata change for kinds without a status subresource);
- deleting an object with finalizers only sets `deletionTimestamp`; removing the last finalizer
  then removes it; an update that changes nothing writes nothing (no new resourceVersion);
- custom objects are pruned, defaulted and validated against their CRD's schema; Secrets get
  their `stringData` folded into `data` (secrets.py);
- deleting a namespace or a CRD deletes what is inside and waits for their finalizers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kube_emulator import errors, meta, patches, schema, secrets, strategies
from kube_emulator.resources import (
    CRD_KEY,
    NAMESPACES_KEY,
    Registry,
    Resource,
    StorageKey,
    crd_status,
    default_crd,
    validate_crd,
)
from kube_emulator.schema import Cause
from kube_emulator.store import ADDED, DELETED, MODIFIED, Store

JSON = dict[str, Any]
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
UNCONDITIONAL_UPDATE_FORBIDDEN = ("customresourcedefinitions", "leases")  # plus every custom resource
CREATE_ON_UPDATE = {("", "events"), ("coordination.k8s.io", "leases")}
GC_FINALIZERS = {"Orphan": "orphan", "Foreground": "foregroundDeletion"}  # propagationPolicy -> finalizer
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"  # held while a CRD's objects are deleted


@dataclass
class WriteOptions:
    dry_run: bool = False
    field_validation: str = "Warn"  # Strict | Warn | Ignore
    warnings: list[str] = field(default_factory=list)
    duplicate_fields: list[str] = field(default_factory=list)  # found in the request body, as "spec.memory"
    fields_checked: bool = False  # the body's fields were checked (a create-on-update decodes it twice)


@dataclass
class DeleteOptions:
    grace_period_seconds: int | None = None
    propagation_policy: str | None = None
    preconditions: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False


def _copy(obj: Mapping[str, Any]) -> JSON:
    return copy.deepcopy(dict(obj))


def _without_rv(obj: Mapping[str, Any]) -> JSON:
    result = dict(obj)
    result["metadata"] = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
    return result


def _non_metadata(obj: Mapping[str, Any]) -> JSON:
    return {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")}


class Objects:
    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry

    # --- reads ---------------------------------------------------------------------------------

    def get(self, res: Resource, namespace: str, name: str) -> JSON:
        found = self.store.get(res.storage_key, namespace, name)
        if found is None:
            raise errors.not_found(res.plural, res.group, name)
        return found

    def require_namespace(self, namespace: str, *, for_create: bool = False) -> None:
        ns = self.store.get(NAMESPACES_KEY, "", namespace)
        if ns is None:
            raise errors.not_found("namespaces", "", namespace)
        if for_create and ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden("namespaces", "", namespace,
                                   f"unable to create new content in namespace {namespace} because it is being "
                                   "terminated")

    # --- create --------------------------------------------------------------------------------

    def create(self, res: Resource, namespace: str, body: Any, opts: WriteOptions) -> JSON:
        obj = self._decode(res, body, opts)
        metadata = obj["metadata"]
        if res.namespaced:
            if metadata.get("namespace", namespace) != namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent "
                                         "on the request")
            metadata["namespace"] = namespace
            self.require_namespace(namespace, for_create=True)
        else:
            metadata.pop("namespace", None)
        if metadata.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = meta.generate_name(str(metadata["generateName"]))
        for key in meta.SYSTEM_FIELDS:
            metadata.pop(key, None)
        if res.create_drops_status:
            obj.pop("status", None)
        self._prepare_create(res, obj)
        obj = self._admit(res, obj, None, opts)
        name = metadata.get("name") or ""
        if self.store.get(res.storage_key, namespace if res.namespaced else "", name) is not None:
            raise errors.already_exists(res.plural, res.group, name)
        metadata = obj["metadata"]
        metadata["uid"] = meta.new_uid()
        metadata["creationTimestamp"] = meta.now()
        if res.has_generation:
            metadata["generation"] = 1
        if opts.dry_run:
            return obj
        stored = self.store.commit(res.storage_key, ADDED, obj)
        if res.storage_key == CRD_KEY:
            self.registry.register_crd(stored)
            stored = self._establish(stored)
        return stored

    def _establish(self, crd: JSON) -> JSON:
        """Accept the names and mark the CRD Established, as the apiextensions controllers do next."""
        status = crd_status(crd, meta.now())
        current = crd.get("status") or {}
        stored_versions = list(dict.fromkeys([*current.get("storedVersions", ()), *status["storedVersions"]]))
        if current.get("acceptedNames") == status["acceptedNames"] and current.get("storedVersions") == \
                stored_versions and current.get("conditions"):
            return crd
        established = _copy(crd)
        established["status"] = dict(current, acceptedNames=status["acceptedNames"], storedVersions=stored_versions,
                                     conditions=current.get("conditions") or status["conditions"])
        return self.store.commit(CRD_KEY, MODIFIED, established, crd)

    def _decode(self, res: Resource, body: Any, opts: WriteOptions | None = None) -> JSON:
        """The request body as an object of this resource, in the stored representation; with `opts`,
        its duplicate and unknown fields are refused (Strict) or warned about (Warn)."""
        if not isinstance(body, Mapping):
            raise errors.bad_request(f"the body of the request was not a JSON object, but {type(body).__name__}")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version and api_version != res.api_version:
            raise errors.bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                     f"API version ({res.api_version})")
        if kind and kind != res.kind:
            raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected kind "
                                     f"({res.kind})")
        obj = res.to_storage(_copy(body))
        raw_meta = obj.get("metadata") or {}
        if not isinstance(raw_meta, Mapping):
            raise errors.bad_request("metadata must be an object")
        obj["metadata"] = {k: v for k, v in raw_meta.items() if k in meta.META_FIELDS}
        obj["apiVersion"] = res.api_version if not res.renames else "v1"
        obj["kind"] = res.kind
        if opts is not None and not opts.fields_checked:
            opts.fields_checked = True
            unknown = [f"metadata.{k}" for k in raw_meta if k not in meta.META_FIELDS]
            if res.schema is not None:
                unknown += schema.unknown_fields(res.schema, obj)
            else:
                top = strategies.unknown_top_level(res.storage_key, obj)
                for key in top:
                    del obj[key]  # as decoding into the Go type drops them
                unknown += [res.renames.get(k, k) for k in top]
            self._check_fields(res, opts, [f'duplicate field "{p}"' for p in opts.duplicate_fields] +
                               [f'unknown field "{p}"' for p in unknown])
        return obj

    def _check_fields(self, res: Resource, opts: WriteOptions, problems: list[str]) -> None:
        """fieldValidation, as kube's decoder applies it to the whole body (status included)."""
        if problems and opts.field_validation == "Strict":
            raise errors.bad_request(f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                                     f"strict decoding error: {', '.join(problems)}")
        if opts.field_validation == "Warn":
            opts.warnings += problems

    def _prepare_create(self, res: Resource, obj: JSON) -> None:
        """Per-kind defaults that the apiserver's strategies set on create."""
        if res.storage_key == NAMESPACES_KEY:
            spec = obj.setdefault("spec", {})
            spec["finalizers"] = [*(f for f in spec.get("finalizers") or () if f != "kubernetes"), "kubernetes"]
            obj["status"] = {"phase": "Active"}
        elif res.storage_key == CRD_KEY:
            default_crd(obj)
            obj["status"] = {}

    # --- admission: schema, metadata, per-kind validation ---------------------------------------

    def _admit(self, res: Resource, obj: JSON, old: JSON | None, opts: WriteOptions) -> JSON:
        name = obj["metadata"].get("name") or ""
        causes: list[Cause] = []
        if not name:
            causes.append(Cause("FieldValueRequired", "Required value: name or generateName is required",
                                "metadata.name"))
        elif old is None:
            causes += meta.check_name(name, dns_label=res.storage_key == NAMESPACES_KEY)
        causes += meta.check_metadata(obj["metadata"])
        if res.schema is not None:
            obj, schema_causes = schema.admit(res.schema, obj)
            causes += schema_causes
        strategies.canonicalize(res.storage_key, obj)
        causes += strategies.validate(res.storage_key, obj)
        if res.storage_key == CRD_KEY:
            causes += validate_crd(obj)
        elif res.storage_key == secrets.SECRETS_KEY:
            obj = secrets.fold(obj)
            causes += secrets.validate(obj, old)
        if causes:
            raise errors.invalid(res.kind, res.group, name, causes)
        return obj

    # --- update --------------------------------------------------------------------------------

    def update(self, res: Resource, namespace: str, name: str, body: Any, subresource: str | None,
               opts: WriteOptions) -> tuple[JSON, bool]:
        """PUT. Returns the stored object and whether it was created (200 vs 201)."""
        ns = namespace if res.namespaced else ""
        old = self.store.get(res.storage_key, ns, name)
        obj = self._decode(res, body, opts)
        body_name = obj["metadata"].get("name")
        if body_name and body_name != name:
            raise errors.bad_request(f"the name of the object ({body_name}) does not match the name on the URL "
                                     f"({name})")
        if old is None:
            if res.storage_key in CREATE_ON_UPDATE and subresource is None:
                fresh = dict(body)
                fresh["metadata"] = {k: v for k, v in body.get("metadata", {}).items() if k != "resourceVersion"}
                fresh["metadata"]["name"] = name
                return self.create(res, namespace, fresh, opts), True
            raise errors.not_found(res.plural, res.group, name)
        rv = obj["metadata"].get("resourceVersion")
        if not rv and (res.is_custom or res.plural in UNCONDITIONAL_UPDATE_FORBIDDEN):
            # The generic registry names the resource (plural) where the kind would be.
            raise errors.invalid(res.plural, res.group, name, [Cause(
                "FieldValueInvalid", "Invalid value: 0: must be specified for an update",
                "metadata.resourceVersion")])
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(res.plural, res.group, name)
        return self._replace(res, old, obj, subresource, opts), False

    def _replace(self, res: Resource, old: JSON, new: JSON, subresource: str | None, opts: WriteOptions) -> JSON:
        """Write `new` over `old` under the update rules; the common end of PUT and PATCH."""
        if subresource == "status":
            merged = _copy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        elif subresource is not None:
            raise errors.method_not_allowed()
        elif res.status_subresource:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        metadata = new["metadata"]
        old_meta = old["metadata"]
        if metadata.get("uid") and metadata["uid"] != old_meta["uid"]:
            raise errors.invalid(res.kind, res.group, old_meta["name"], [Cause(
                "FieldValueInvalid", f'Invalid value: "{metadata["uid"]}": field is immutable', "metadata.uid")])
        for key in meta.SYSTEM_FIELDS:
            if key in old_meta:
                metadata[key] = old_meta[key]
            else:
                metadata.pop(key, None)
        metadata["name"] = old_meta["name"]
        if "namespace" in old_meta:
            metadata["namespace"] = old_meta["namespace"]
        metadata["resourceVersion"] = old_meta["resourceVersion"]
        if old_meta.get("deletionTimestamp"):
            added = sorted({f for f in metadata.get("finalizers") or () if f not in (old_meta.get("finalizers") or ())})
            if added:
                go_list = "[]string{" + ", ".join(json.dumps(f) for f in added) + "}"
                cause = Cause("FieldValueForbidden", "Forbidden: no new finalizers can be added if the object is "
                                                     f"being deleted, found new finalizers {go_list}",
                              "metadata.finalizers")
                # Twice, as kube reports it: the common metadata checks and the strategy's both find it.
                raise errors.invalid(res.kind, res.group, old_meta["name"], [cause, cause])
        new = self._admit(res, new, old, opts)
        if res.has_generation and subresource is None and _non_metadata(new) != _non_metadata(old):
            new["metadata"]["generation"] = old_meta.get("generation", 1) + 1
        if _without_rv(new) == _without_rv(old):
            return old  # nothing changed: no write, no event, the same resourceVersion
        if opts.dry_run:
            return new
        if new["metadata"].get("deletionTimestamp") and not self._blocking_finalizers(res, new):
            # The last finalizer gone: kube deletes instead of updating (one DELETED event, which carries
            # the object as last stored) and answers with the object as the update made it.
            self._remove(res, old)
            return new
        stored = self.store.commit(res.storage_key, MODIFIED, new, old)
        if res.storage_key == CRD_KEY and not stored["metadata"].get("deletionTimestamp"):
            self.registry.register_crd(stored)
            stored = self._establish(stored)
        return stored

    def _blocking_finalizers(self, res: Resource, obj: Mapping[str, Any]) -> bool:
        finalizers = list(obj["metadata"].get("finalizers") or ())
        if res.storage_key == CRD_KEY and CRD_CLEANUP in finalizers and not self._crd_objects(obj):
            finalizers.remove(CRD_CLEANUP)  # the emulator is its controller: nothing left to clean up
        if finalizers:
            return True
        if res.storage_key == NAMESPACES_KEY:
            return bool(obj.get("spec", {}).get("finalizers"))
        return False

    def _crd_objects(self, crd: Mapping[str, Any]) -> list[JSON]:
        resources = [r for r in self.registry.all() if r.crd_name == crd["metadata"]["name"]]
        return self.store.objects_of(resources[0].storage_key) if resources else []

    # --- patch ---------------------------------------------------------------------------------

    def patch(self, res: Resource, namespace: str, name: str, content_type: str, body: Any,
              subresource: str | None, opts: WriteOptions) -> tuple[JSON, bool]:
        ns = namespace if res.namespaced else ""
        old = self.store.get(res.storage_key, ns, name)
        if old is None:
            if content_type == patches.APPLY_PATCH and subresource is None:
                applied = dict(body) if isinstance(body, Mapping) else body
                return self.create(res, namespace, applied, opts), True
            raise errors.not_found(res.plural, res.group, name)
        current = res.from_storage(old)
        if content_type == patches.MERGE_PATCH:
            patched = patches.merge_patch(current, body)
        elif content_type == patches.JSON_PATCH:
            patched = patches.json_patch(current, body)
        elif content_type == patches.STRATEGIC_PATCH:
            if res.merge_keys is None:
                raise errors.unsupported_media_type(content_type, [patches.JSON_PATCH, patches.MERGE_PATCH,
                                                                   patches.APPLY_PATCH])
            patched = patches.strategic_merge(current, body, res.merge_keys)
        elif content_type == patches.APPLY_PATCH:
            keys = dict(res.merge_keys or {}) | patches.schema_list_keys(res.schema)
            patched = patches.strategic_merge(current, _apply_body(body), keys)
        else:
            raise errors.unsupported_media_type(content_type, [patches.JSON_PATCH, patches.MERGE_PATCH,
                                                               patches.STRATEGIC_PATCH, patches.APPLY_PATCH])
        if not isinstance(patched, Mapping):
            raise errors.bad_request("the patched object is not a JSON object")
        obj = self._decode(res, patched, opts)
        rv = obj["metadata"].get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(res.plural, res.group, name)
        if obj["metadata"].get("name") != name:
            raise errors.bad_request(f"the name of the object ({obj['metadata'].get('name')}) does not match "
                                     f"the name on the URL ({name})")
        return self._replace(res, old, obj, subresource, opts), False

    # --- delete --------------------------------------------------------------------------------

    def delete(self, res: Resource, namespace: str, name: str, options: DeleteOptions) -> tuple[JSON, bool]:
        """Returns the object the answer shows and whether it was removed at once (else it waits for finalizers)."""
        ns = namespace if res.namespaced else ""
        old = self.store.get(res.storage_key, ns, name)
        if old is None:
            raise errors.not_found(res.plural, res.group, name)
        self._check_preconditions(res, old, options.preconditions)
        if res.storage_key == NAMESPACES_KEY and name in PROTECTED_NAMESPACES:
            raise errors.forbidden("namespaces", "", name, "this namespace may not be deleted")
        terminating = res.storage_key in (NAMESPACES_KEY, CRD_KEY)
        # Orphan and Foreground leave the object to the garbage collector, behind a finalizer of its own.
        collector = GC_FINALIZERS.get(options.propagation_policy or "")
        if not terminating and not old["metadata"].get("finalizers") and collector is None:
            if options.dry_run:
                return old, True
            return self._remove(res, old), True
        if old["metadata"].get("deletionTimestamp"):
            return old, False
        marked = _copy(old)
        added = collector if collector is not None else CRD_CLEANUP if res.storage_key == CRD_KEY else None
        if added is not None and added not in (marked["metadata"].get("finalizers") or ()):
            marked["metadata"]["finalizers"] = [*(marked["metadata"].get("finalizers") or ()), added]
        marked["metadata"]["deletionTimestamp"] = meta.now()
        # Namespaces and CRDs have registries of their own: no grace period, no new generation.
        if not terminating:  # none of the kinds here deletes gracefully (pods would): the period is 0
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            if res.has_generation:
                marked["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if res.storage_key == NAMESPACES_KEY:
            marked["status"] = {"phase": "Terminating"}
        elif res.storage_key == CRD_KEY:
            conditions = [c for c in marked.get("status", {}).get("conditions", ()) if c.get("type") != "Terminating"]
            conditions.append({"type": "Terminating", "status": "True", "lastTransitionTime": meta.now(),
                               "reason": "InstanceDeletionPending", "message": "CustomResourceDefinition marked "
                                                                               "for deletion; CustomResource "
                                                                               "deletion will begin soon"})
            marked.setdefault("status", {})["conditions"] = conditions
        if options.dry_run:
            return marked, False
        stored = self.store.commit(res.storage_key, MODIFIED, marked, old)
        if res.storage_key == NAMESPACES_KEY:
            self._empty_namespace(name)
        elif res.storage_key == CRD_KEY:
            self._empty_crd(stored)
        if collector is not None:
            self._collect(res, stored, collector)
        # Even when that already removed it, the answer is the object marked for deletion, as kube's
        # (namespaces and CRDs always wait for their finalizers there).
        return stored, False

    def _collect(self, res: Resource, obj: JSON, collector: str) -> None:
        """The garbage collector's part: ownerReferences are never followed here, so there are no dependents
        to orphan or delete first, and it removes its finalizer at once (the last one: the object goes)."""
        finalized = _copy(obj)
        finalized["metadata"]["finalizers"] = [f for f in obj["metadata"]["finalizers"] if f != collector]
        if not finalized["metadata"]["finalizers"]:
            del finalized["metadata"]["finalizers"]
        self._replace(res, obj, finalized, None, WriteOptions())

    def _check_preconditions(self, res: Resource, old: JSON, preconditions: Mapping[str, Any]) -> None:
        """As rest.BeforeDelete checks them: the conflict names the kind where the resource would be."""
        uid, rv = preconditions.get("uid"), preconditions.get("resourceVersion")
        name = old["metadata"]["name"]
        if res.storage_key == CRD_KEY:  # apiextensions checks them itself, in words of its own
            if uid and uid != old["metadata"]["uid"]:
                raise errors.conflict(res.plural, res.group, name, f"Precondition failed: UID in precondition: {uid}, "
                                                                   f"UID in object meta: {old['metadata']['uid']}")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise errors.conflict(res.plural, res.group, name, "Precondition failed: ResourceVersion in "
                                      f"precondition: {rv}, ResourceVersion in object meta: "
                                      f"{old['metadata']['resourceVersion']}")
            return
        if uid and uid != old["metadata"]["uid"]:
            raise errors.conflict(res.kind, res.group, name, f"the UID in the precondition ({uid}) does not match "
                                  f"the UID in record ({old['metadata']['uid']}). The object might have been "
                                  "deleted and then recreated")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(res.kind, res.group, name, f"the ResourceVersion in the precondition ({rv}) does "
                                  f"not match the ResourceVersion in record ({old['metadata']['resourceVersion']}). "
                                  "The object might have been modified")

    def _remove(self, res: Resource, obj: JSON) -> JSON:
        gone = self.store.commit(res.storage_key, DELETED, _copy(obj), obj)
        if res.storage_key == CRD_KEY:
            self._unregister(gone)
        self._after_removal(res.storage_key, gone)
        return gone

    def _after_removal(self, key: StorageKey, obj: JSON) -> None:
        """A namespace or a CRD being deleted goes once the last object inside it has gone."""
        namespace = obj["metadata"].get("namespace")
        if namespace:
            ns = self.store.get(NAMESPACES_KEY, "", namespace)
            if ns is not None and ns["metadata"].get("deletionTimestamp"):
                self._finish_namespace(ns)
        crd_res = self.registry.by_storage(key)
        if crd_res is not None and crd_res.crd_name:
            crd = self.store.get(CRD_KEY, "", crd_res.crd_name)
            if crd is not None and crd["metadata"].get("deletionTimestamp") and not self.store.objects_of(key):
                self._finish_crd(crd)

    def _empty_namespace(self, namespace: str) -> None:
        for key in self.store.keys():
            for obj in list(self.store.objects_of(key, namespace)):
                res = self.registry.by_storage(key)
                if res is not None and obj["metadata"].get("namespace") == namespace:
                    self._delete_quietly(res, obj)
        ns = self.store.get(NAMESPACES_KEY, "", namespace)
        if ns is not None:
            self._finish_namespace(ns)

    def _finish_namespace(self, ns: JSON) -> None:
        name = ns["metadata"]["name"]
        if self.store.count_in_namespace(name):
            return
        if ns.get("spec", {}).get("finalizers"):
            finalized = _copy(ns)
            finalized["spec"]["finalizers"] = []
            ns = self.store.commit(NAMESPACES_KEY, MODIFIED, finalized, ns)
        if not ns["metadata"].get("finalizers"):
            res = self.registry.get("", "v1", "namespaces")
            assert res is not None
            self._remove(res, ns)

    def _empty_crd(self, crd: JSON) -> None:
        resources = [r for r in self.registry.all() if r.crd_name == crd["metadata"]["name"]]
        if resources:
            for obj in list(self.store.objects_of(resources[0].storage_key)):
                self._delete_quietly(resources[0], obj)
        current = self.store.get(CRD_KEY, "", crd["metadata"]["name"])
        if current is not None and not (resources and self.store.objects_of(resources[0].storage_key)):
            self._finish_crd(current)

    def _finish_crd(self, crd: JSON) -> None:
        res = self.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        assert res is not None
        if not self._blocking_finalizers(res, crd):
            self._remove(res, crd)

    def _unregister(self, crd: JSON) -> None:
        for res in self.registry.unregister_crd(crd["metadata"]["name"]):
            self.store.close_watchers(res.storage_key)

    def _delete_quietly(self, res: Resource, obj: JSON) -> None:
        try:
            self.delete(res, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], DeleteOptions())
        except errors.ApiError:
            pass  # already gone or protected: nothing more to do for it

    def delete_collection(self, res: Resource, namespace: str | None, predicate: Callable[[JSON], bool] | None,
                          options: DeleteOptions) -> list[JSON]:
        deleted = []
        for obj in list(self.store.objects_of(res.storage_key, namespace)):
            if predicate is None or predicate(obj):
                current, _ = self.delete(res, obj["metadata"].get("namespace", ""), obj["metadata"]["name"],
                                         options)
                deleted.append(current)
        return deleted


def _apply_body(body: Any) -> Any:
    """Server-side apply, approximated: the applied configuration merges like a strategic patch."""
    if not isinstance(body, Mapping):
        raise errors.bad_request("the applied configuration is not an object")
    return body


def install_crd(objects: Objects, crd: Mapping[str, Any]) -> JSON:
    """Create (or replace) a CRD from a manifest, as `kubectl apply` would; used at start-up."""
    res = objects.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    assert res is not None
    existing = objects.store.get(CRD_KEY, "", crd["metadata"]["name"])
    if existing is None:
        return objects.create(res, "", crd, WriteOptions())
    body = dict(crd)
    body["metadata"] = dict(crd["metadata"], resourceVersion=existing["metadata"]["resourceVersion"])
    updated, _ = objects.update(res, "", crd["metadata"]["name"], body, None, WriteOptions())
    return updated
