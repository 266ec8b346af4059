"""Per-kind rules of kube-apiserver's registry strategies for built-in kinds: what their
PrepareForCreate/Canonicalize set and what their Validate refuses (k8s.io/kubernetes/pkg/registry and
pkg/apis/*/validation), for namespaces, core events and leases.
"""

from __future__ import annotations

import json
from typing import Any

from kube_emulator.schema import Cause

JSON = dict[str, Any]
EVENTS_KEY = ("", "events")
LEASES_KEY = ("coordination.k8s.io", "leases")
NAMESPACES_KEY = ("", "namespaces")
NAME_LABEL = "kubernetes.io/metadata.name"  # every namespace carries its own name as this label

# The top-level fields of the built-in kinds' Go types (stored representation: core v1 Event's names).
# Anything else at the top is an unknown field, which typed decoding drops (or refuses: Strict).
_COMMON = frozenset({"apiVersion", "kind", "metadata"})
_SPEC_STATUS = _COMMON | {"spec", "status"}
_ROLE_BINDING = _COMMON | {"subjects", "roleRef"}
TOP_LEVEL_FIELDS: dict[tuple[str, str], frozenset[str]] = {
    NAMESPACES_KEY: _SPEC_STATUS,
    ("", "nodes"): _SPEC_STATUS,
    ("", "services"): _SPEC_STATUS,
    ("apps", "daemonsets"): _SPEC_STATUS,
    ("apiextensions.k8s.io", "customresourcedefinitions"): _SPEC_STATUS,
    LEASES_KEY: _COMMON | {"spec"},
    ("", "configmaps"): _COMMON | {"data", "binaryData", "immutable"},
    ("", "secrets"): _COMMON | {"data", "stringData", "type", "immutable"},
    ("", "serviceaccounts"): _COMMON | {"secrets", "imagePullSecrets", "automountServiceAccountToken"},
    EVENTS_KEY: _COMMON | {"involvedObject", "reason", "message", "source", "firstTimestamp", "lastTimestamp",
                           "count", "type", "eventTime", "series", "action", "related", "reportingComponent",
                           "reportingInstance"},
    ("rbac.authorization.k8s.io", "clusterroles"): _COMMON | {"rules", "aggregationRule"},
    ("rbac.authorization.k8s.io", "roles"): _COMMON | {"rules"},
    ("rbac.authorization.k8s.io", "clusterrolebindings"): _ROLE_BINDING,
    ("rbac.authorization.k8s.io", "rolebindings"): _ROLE_BINDING,
}


def unknown_top_level(key: tuple[str, str], obj: JSON) -> list[str]:
    """Top-level fields a built-in kind does not have (nested ones are not checked)."""
    known = TOP_LEVEL_FIELDS.get(key)
    return [k for k in obj if k not in known] if known is not None else []


def canonicalize(key: tuple[str, str], obj: JSON) -> None:
    """What the strategy sets on every create and update, in place."""
    if key == NAMESPACES_KEY:
        obj["metadata"]["labels"] = {**(obj["metadata"].get("labels") or {}), NAME_LABEL: obj["metadata"]["name"]}
    elif key == EVENTS_KEY:
        obj.setdefault("eventTime", None)  # a MicroTime without omitempty: null when unset


def validate(key: tuple[str, str], obj: JSON) -> list[Cause]:
    if key == EVENTS_KEY:
        return _event(obj)
    if key == LEASES_KEY:
        return _lease(obj)
    return []


def _invalid(field: str, value: Any, detail: str) -> Cause:
    return Cause("FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {detail}", field)


def _event(event: JSON) -> list[Cause]:
    """legacyValidateEvent's namespace rule: the event lives in its involved object's namespace."""
    namespace = event["metadata"].get("namespace", "")
    involved = str((event.get("involvedObject") or {}).get("namespace") or "")
    if not event.get("eventTime"):
        agree = namespace in ("", "default") if not involved else namespace == involved
    else:
        agree = bool(involved) or namespace in ("default", "kube-system")
    return [] if agree else [_invalid("involvedObject.namespace", involved, "does not match event.namespace")]


def _lease(lease: JSON) -> list[Cause]:
    spec = lease.get("spec") or {}
    causes = []
    duration, transitions = spec.get("leaseDurationSeconds"), spec.get("leaseTransitions")
    if isinstance(duration, int) and duration <= 0:
        causes.append(_invalid("spec.leaseDurationSeconds", duration, "must be greater than 0"))
    if isinstance(transitions, int) and transitions < 0:
        causes.append(_invalid("spec.leaseTransitions", transitions, "must be greater than or equal to 0"))
    return causes
