"""The served resources: a fixed table of builtin kinds plus whatever CRDs register at run time.

A `Resource` is one (group, version, plural) as discovery lists it. Several resources may share one
storage (`storage_key`): every version of a CRD, and core `events` with `events.k8s.io` events (which
only renames fields, see `EVENTS_V1_FIELDS`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kube_emulator import errors
from kube_emulator.schema import Cause

JSON = dict[str, Any]
StorageKey = tuple[str, str]  # (group, plural)

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
# A custom resource's verbs in the order apiextensions-apiserver lists them in discovery.
CRD_VERBS = ("delete", "deletecollection", "get", "list", "patch", "create", "update", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")
# A marker in `merge_keys`: a list of scalars that strategic merge unions instead of replacing.
MERGE_SCALARS = ""

# Strategic-merge list keys every kind shares (ObjectMeta's patch tags).
_META_MERGE_KEYS: Mapping[str, str] = {
    "metadata.ownerReferences": "uid",
    "metadata.finalizers": MERGE_SCALARS,
}


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    status_subresource: bool = False
    extra_subresources: tuple[str, ...] = ()  # served for discovery only (namespaces/finalize)
    # Metadata semantics that differ between kinds in kube-apiserver.
    has_generation: bool = False
    create_drops_status: bool = False  # CRs with a status subresource: create cannot set status
    # CRD-given behaviour.
    schema: Mapping[str, Any] | None = None
    printer_columns: tuple[Mapping[str, Any], ...] = ()
    selectable_fields: tuple[str, ...] = ()  # extra field-selector paths, as "spec.nodeName"
    # Strategic merge: dotted path of a list -> merge key (MERGE_SCALARS for a set of scalars).
    # None: this kind refuses strategic-merge patches (custom resources do).
    merge_keys: Mapping[str, str] | None = None
    # Field renames between the stored representation and this version (events.k8s.io).
    renames: Mapping[str, str] = field(default_factory=dict)
    crd_name: str | None = None
    storage_group: str | None = None  # when the storage is another group's (events.k8s.io)
    storage_version: str | None = None  # when etcd holds another version (CRDs: v1beta1); discovery's hash

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def storage_key(self) -> StorageKey:
        return (self.group if self.storage_group is None else self.storage_group, self.plural)

    @property
    def is_custom(self) -> bool:
        return self.crd_name is not None

    @property
    def qualified(self) -> str:
        """`virtualmachines.virt.example.dev`: how error messages name the resource."""
        return errors.qualified(self.plural, self.group)

    def discovery(self) -> list[JSON]:
        """The APIResource entries of this resource and its subresources."""
        main: JSON = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        # The hash of the storage version's group/version/kind: events.k8s.io events share core's.
        storage_group = self.group if self.storage_group is None else self.storage_group
        storage_version = self.storage_version or self.version
        digest = hashlib.sha256(f"{storage_group}/{storage_version}/{self.kind}".encode()).digest()
        main["storageVersionHash"] = _b64(digest[:8])
        entries = [main]
        for sub in (("status",) if self.status_subresource else ()) + self.extra_subresources:
            verbs = ["update"] if sub == "finalize" else list(SUBRESOURCE_VERBS)
            entries.append(
                {
                    "name": f"{self.plural}/{sub}",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": verbs,
                }
            )
        return entries

    def to_storage(self, obj: JSON) -> JSON:
        """This version's representation -> the stored one (only renames fields)."""
        if not self.renames:
            return obj
        back = {v: k for k, v in self.renames.items()}
        return {back.get(k, k): v for k, v in obj.items()}

    def from_storage(self, obj: JSON) -> JSON:
        """The stored object as this version shows it: apiVersion set, fields renamed."""
        shown: JSON = {"apiVersion": self.api_version, "kind": self.kind}
        for key, value in obj.items():
            if key not in ("apiVersion", "kind"):
                shown[self.renames.get(key, key)] = value
        return shown

    def storage_field(self, path: str) -> str:
        """A field-selector path of this version -> the stored object's path."""
        head, dot, rest = path.partition(".")
        back = {v: k for k, v in self.renames.items()}
        return back.get(head, head) + dot + rest


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# events.k8s.io/v1 Event field -> core/v1 Event field, for the fields that differ.
EVENTS_V1_FIELDS: Mapping[str, str] = {
    "involvedObject": "regarding",
    "message": "note",
    "reportingComponent": "reportingController",
    "source": "deprecatedSource",
    "firstTimestamp": "deprecatedFirstTimestamp",
    "lastTimestamp": "deprecatedLastTimestamp",
    "count": "deprecatedCount",
}

# A pod template's strategic-merge keys (k8s.io/api/core/v1 patchMergeKey tags), under a workload's spec.
_POD = "spec.template.spec"
_POD_MERGE_KEYS: Mapping[str, str] = {
    **{f"{_POD}.{lst}": "name" for lst in ("containers", "initContainers", "volumes", "imagePullSecrets")},
    **{f"{_POD}.{c}.{lst}": key for c in ("containers", "initContainers")
       for lst, key in (("env", "name"), ("volumeMounts", "mountPath"), ("ports", "containerPort"))},
}

BUILTINS: tuple[Resource, ...] = (
    Resource(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        False,
        ("ns",),
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
        status_subresource=True,
        extra_subresources=("finalize",),
        merge_keys={**_META_MERGE_KEYS, "status.conditions": "type"},
    ),
    Resource(
        "",
        "v1",
        "nodes",
        "node",
        "Node",
        False,
        ("no",),
        status_subresource=True,
        merge_keys={
            **_META_MERGE_KEYS,
            "spec.taints": "key",
            "status.conditions": "type",
            "status.addresses": "type",
            "status.volumesAttached": "name",
            "spec.podCIDRs": MERGE_SCALARS,
        },
    ),
    Resource("", "v1", "events", "event", "Event", True, ("ev",), merge_keys=_META_MERGE_KEYS),
    Resource("", "v1", "configmaps", "configmap", "ConfigMap", True, ("cm",), merge_keys=_META_MERGE_KEYS),
    Resource(
        "events.k8s.io",
        "v1",
        "events",
        "event",
        "Event",
        True,
        ("ev",),
        merge_keys=_META_MERGE_KEYS,
        renames=EVENTS_V1_FIELDS,
        storage_group="",
    ),
    Resource("", "v1", "secrets", "secret", "Secret", True, merge_keys=_META_MERGE_KEYS),
    # Stored and served only (no controller acts on them): enough for Helm to install a chart.
    Resource("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, ("sa",),
             merge_keys={**_META_MERGE_KEYS, "secrets": "name", "imagePullSecrets": "name"}),
    Resource("", "v1", "services", "service", "Service", True, ("svc",), ("all",), status_subresource=True,
             merge_keys={**_META_MERGE_KEYS, "spec.ports": "port"}),
    Resource("apps", "v1", "daemonsets", "daemonset", "DaemonSet", True, ("ds",), ("all",),
             status_subresource=True, has_generation=True, merge_keys={**_META_MERGE_KEYS, **_POD_MERGE_KEYS}),
    Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", False,
             merge_keys=_META_MERGE_KEYS),
    Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding",
             False, merge_keys=_META_MERGE_KEYS),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", True, merge_keys=_META_MERGE_KEYS),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", True,
             merge_keys=_META_MERGE_KEYS),
    Resource("coordination.k8s.io", "v1", "leases", "lease", "Lease", True, merge_keys=_META_MERGE_KEYS),
    Resource(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        False,
        ("crd", "crds"),
        ("api-extensions",),
        status_subresource=True,
        has_generation=True,
        merge_keys={**_META_MERGE_KEYS, "status.conditions": "type"},
        storage_version="v1beta1",
    ),
)
CRD_KEY: StorageKey = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACES_KEY: StorageKey = ("", "namespaces")


_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Sort key of kube's version priority: GA > beta > alpha, higher numbers first, then others."""
    match = _VERSION_RE.match(version)
    if not match:
        return (3, 0, 0, version)
    major, stage, minor = match.groups()
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -int(major), -int(minor or 0), version)


class Registry:
    """Which resources are served now; CRDs come and go while the server runs."""

    def __init__(self) -> None:
        self._builtin: dict[tuple[str, str, str], Resource] = {(r.group, r.version, r.plural): r for r in BUILTINS}
        self._custom: dict[str, list[Resource]] = {}  # CRD name -> its served versions
        self.on_change: list[Callable[[], None]] = []

    def all(self) -> list[Resource]:
        return list(self._builtin.values()) + [r for rs in self._custom.values() for r in rs]

    def get(self, group: str, version: str, plural: str) -> Resource | None:
        found = self._builtin.get((group, version, plural))
        if found is not None:
            return found
        for resources in self._custom.values():
            for res in resources:
                if (res.group, res.version, res.plural) == (group, version, plural):
                    return res
        return None

    def by_storage(self, key: StorageKey) -> Resource | None:
        """Any resource stored under `key` (the first builtin, or a CRD's storage version)."""
        for res in self.all():
            if res.storage_key == key:
                return res
        return None

    def groups(self) -> list[tuple[str, list[str]]]:
        """(group, versions by priority) for every non-core group, in a stable order."""
        seen: dict[str, set[str]] = {}
        order: list[str] = []
        for res in self.all():
            if not res.group:
                continue
            if res.group not in seen:
                seen[res.group] = set()
                order.append(res.group)
            seen[res.group].add(res.version)
        return [(g, sorted(seen[g], key=version_priority)) for g in order]

    def in_version(self, group: str, version: str) -> list[Resource]:
        return [r for r in self.all() if (r.group, r.version) == (group, version)]

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        self._custom[crd["metadata"]["name"]] = list(resources_of_crd(crd))
        for callback in self.on_change:
            callback()

    def unregister_crd(self, name: str) -> list[Resource]:
        gone = self._custom.pop(name, [])
        for callback in self.on_change:
            callback()
        return gone


def resources_of_crd(crd: Mapping[str, Any]) -> Iterable[Resource]:
    spec = crd["spec"]
    names = spec["names"]
    for ver in spec["versions"]:
        if not ver.get("served", True):
            continue
        subresources = ver.get("subresources") or {}
        has_status = "status" in subresources
        schema = (ver.get("schema") or {}).get("openAPIV3Schema")
        selectable = tuple(f["jsonPath"].lstrip(".") for f in ver.get("selectableFields") or ())
        yield Resource(
            group=spec["group"],
            version=ver["name"],
            plural=names["plural"],
            singular=names.get("singular") or names["kind"].lower(),
            kind=names["kind"],
            namespaced=spec["scope"] == "Namespaced",
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            verbs=CRD_VERBS,
            status_subresource=has_status,
            has_generation=True,
            create_drops_status=has_status,
            schema=schema,
            printer_columns=tuple(ver.get("additionalPrinterColumns") or ()),
            selectable_fields=selectable,
            merge_keys=None,
            crd_name=crd["metadata"]["name"],
        )


def default_crd(crd: JSON) -> None:
    """Fill what apiextensions defaults (names.singular, listKind, conversion) in place."""
    spec = crd.setdefault("spec", {})
    names = spec.setdefault("names", {})
    if names.get("kind"):
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
    spec.setdefault("conversion", {"strategy": "None"})
    for ver in spec.get("versions") or ():
        if isinstance(ver, dict):
            ver.setdefault("served", True)


def validate_crd(crd: Mapping[str, Any]) -> list[Cause]:
    """The checks of apiextensions' CRD validation that a hand-written CRD most often trips on."""
    causes: list[Cause] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    plural = names.get("plural") or ""
    if not group:
        causes.append(Cause("FieldValueRequired", "Required value", "spec.group"))
    elif "." not in group:
        causes.append(
            Cause(
                "FieldValueInvalid", f'Invalid value: "{group}": should be a domain with at least one dot', "spec.group"
            )
        )
    for key in ("plural", "kind"):
        if not names.get(key):
            causes.append(Cause("FieldValueRequired", "Required value", f"spec.names.{key}"))
    name = (crd.get("metadata") or {}).get("name", "")
    if group and plural and name != f"{plural}.{group}":
        causes.append(
            Cause(
                "FieldValueInvalid",
                f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group',
                "metadata.name",
            )
        )
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(
            Cause(
                "FieldValueNotSupported",
                f'Unsupported value: "{spec.get("scope", "")}": supported values: "Cluster", "Namespaced"',
                "spec.scope",
            )
        )
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        causes.append(
            Cause(
                "FieldValueInvalid",
                'Invalid value: "null": must have exactly one version marked as storage version',
                "spec.versions",
            )
        )
        return causes
    storage = [v for v in versions if isinstance(v, dict) and v.get("storage")]
    if len(storage) != 1:
        causes.append(
            Cause(
                "FieldValueInvalid",
                'Invalid value: "null": must have exactly one version marked as storage version',
                "spec.versions",
            )
        )
    for index, ver in enumerate(versions):
        if not isinstance(ver, dict) or not ver.get("name"):
            causes.append(Cause("FieldValueRequired", "Required value", f"spec.versions[{index}].name"))
        elif not (ver.get("schema") or {}).get("openAPIV3Schema"):
            causes.append(
                Cause(
                    "FieldValueRequired",
                    "Required value: schemas are required",
                    f"spec.versions[{index}].schema.openAPIV3Schema",
                )
            )
    return causes


def crd_status(crd: Mapping[str, Any], now: str) -> JSON:
    """The status the apiextensions controllers would settle on: names accepted, Established."""
    spec = crd["spec"]
    storage = [v["name"] for v in spec["versions"] if v.get("storage")]
    conditions = [
        {
            "type": "NamesAccepted",
            "status": "True",
            "lastTransitionTime": now,
            "reason": "NoConflicts",
            "message": "no conflicts found",
        },
        {
            "type": "Established",
            "status": "True",
            "lastTransitionTime": now,
            "reason": "InitialNamesAccepted",
            "message": "the initial names have been accepted",
        },
    ]
    return {"conditions": conditions, "acceptedNames": dict(spec["names"]), "storedVersions": storage}
