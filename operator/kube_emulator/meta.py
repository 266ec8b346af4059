"""ObjectMeta rules that hold for every kind: names, labels, system fields, timestamps."""

from __future__ import annotations

import datetime
import random
import re
import uuid
from collections.abc import Mapping
from typing import Any

from kube_emulator.schema import Cause

JSON = dict[str, Any]

# Fields of ObjectMeta; anything else under metadata is dropped as the typed decoder would.
META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
})
# Set by the server only: a client's values are replaced by the stored ones on update.
SYSTEM_FIELDS = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
                 "selfLink")

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apiserver's: no vowels, no look-alikes

SUBDOMAIN_MESSAGE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                     "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
                     "regex used for validation is "
                     "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
LABEL_MESSAGE = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                 "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
                 "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")


def now() -> str:
    """RFC 3339 with seconds precision, as metav1.Time serialises."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid() -> str:
    return str(uuid.uuid4())


def generate_name(prefix: str) -> str:
    return prefix + "".join(random.choice(_GENERATE_ALPHABET) for _ in range(5))


def _invalid(field: str, value: Any, detail: str) -> Cause:
    return Cause("FieldValueInvalid", f'Invalid value: "{value}": {detail}', field)


def check_name(name: str, *, dns_label: bool) -> list[Cause]:
    if dns_label:
        if len(name) > 63:
            return [_invalid("metadata.name", name, "must be no more than 63 characters")]
        return [] if _LABEL.match(name) else [_invalid("metadata.name", name, LABEL_MESSAGE)]
    if len(name) > 253:
        return [_invalid("metadata.name", name, "must be no more than 253 characters")]
    return [] if _SUBDOMAIN.match(name) else [_invalid("metadata.name", name, SUBDOMAIN_MESSAGE)]


def _check_qualified_key(field: str, key: str) -> list[Cause]:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        return [_invalid(field, key, "prefix part " + SUBDOMAIN_MESSAGE)]
    if not name or len(name) > 63 or not _NAME_PART.match(name):
        return [_invalid(field, key, "name part must consist of alphanumeric characters, '-', '_' or '.', and "
                                     "must start and end with an alphanumeric character (e.g. 'MyName',  or "
                                     "'my.name',  or '123-abc', regex used for validation is "
                                     "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")]
    return []


def check_metadata(meta: Mapping[str, Any]) -> list[Cause]:
    """Labels, annotations and finalizers: the parts of ObjectMeta validation clients trip on."""
    causes: list[Cause] = []
    for field in ("labels", "annotations"):
        values = meta.get(field)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            causes.append(_invalid(f"metadata.{field}", values, "must be a map of strings"))
            continue
        for key, value in values.items():
            causes += _check_qualified_key(f"metadata.{field}", key)
            if not isinstance(value, str):
                causes.append(_invalid(f"metadata.{field}", value, "must be a string"))
            elif field == "labels" and (len(value) > 63 or not _LABEL_VALUE.match(value)):
                causes.append(_invalid("metadata.labels", value,
                                       "a valid label must be an empty string or consist of alphanumeric "
                                       "characters, '-', '_' or '.', and must start and end with an "
                                       "alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
                                       "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?"
                                       "[A-Za-z0-9])?')"))
    finalizers = meta.get("finalizers")
    if finalizers is not None:
        if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
            causes.append(_invalid("metadata.finalizers", finalizers, "must be a list of strings"))
        else:
            for index, item in enumerate(finalizers):
                causes += _check_qualified_key(f"metadata.finalizers[{index}]", item)
    return causes
