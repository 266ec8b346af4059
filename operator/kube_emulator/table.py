"""``meta.k8s.io/v1`` Table rendering (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``).

Custom resources follow apiextensions-apiserver's table convertor: a Name column, then the
version's ``additionalPrinterColumns`` (an ``Age`` column on ``.metadata.creationTimestamp`` when
there are none). A cell takes the first JSONPath match only; ``integer``/``number``/``boolean``
cells keep their JSON type, ``string`` cells hold the value as kubectl's JSONPath printer writes
it, and ``date`` cells are rendered by the server as an age (``5m``, ``3d4h``), as kube-apiserver
does. A missing value is ``None`` (kubectl prints ``<none>``).

Built-in kinds follow kube-apiserver's printers: nodes, namespaces, core and events.k8s.io
events, secrets and leases have their own columns; anything else (e.g. customresourcedefinitions) gets the
default ``Name`` / ``Created At`` table. The server always renders every column; kubectl hides
those with ``priority`` > 0 unless ``-o wide``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from kube_emulator.jsonpath import JSONPathError, compile_path, format_text

__all__ = [
    "INCLUDE_METADATA",
    "INCLUDE_NONE",
    "INCLUDE_OBJECT",
    "ColumnSpec",
    "column_specs_for_crd_version",
    "columns_for_builtin",
    "columns_for_crd_version",
    "human_duration",
    "render_row",
    "render_table",
]

INCLUDE_NONE: Final = "None"
INCLUDE_METADATA: Final = "Metadata"
INCLUDE_OBJECT: Final = "Object"
_INCLUDE_CHOICES: Final = (INCLUDE_NONE, INCLUDE_METADATA, INCLUDE_OBJECT)

# metav1.ObjectMeta{}.SwaggerDoc() texts, which kube-apiserver puts in column descriptions.
NAME_DESCRIPTION: Final = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources "
    "may allow a client to request the generation of an appropriate name automatically. Name is primarily "
    "intended for creation idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
CREATION_TIMESTAMP_DESCRIPTION: Final = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not "
    "guaranteed to be set in happens-before order across separate operations. Clients may not set this value. "
    "It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. "
    "More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)

CellFunction = Callable[[Mapping[str, Any], datetime], Any]


@dataclass(frozen=True)
class ColumnSpec:
    """One table column: its ``TableColumnDefinition`` and how to compute its cells.

    A cell comes from ``cell`` when given (built-in printers), else from ``json_path`` (CRD
    printer columns); with neither, the column is the object's name.
    """

    name: str
    type: str
    format: str = ""
    description: str = ""
    priority: int = 0
    json_path: str | None = None
    cell: CellFunction | None = field(default=None, compare=False, repr=False)

    def definition(self) -> dict[str, Any]:
        """The ``TableColumnDefinition`` JSON (every field present, as kube-apiserver writes it)."""
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


NAME_COLUMN: Final = ColumnSpec("Name", "string", "name", NAME_DESCRIPTION)


# --- time --------------------------------------------------------------------------------------------

_RFC3339: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$",
    re.ASCII,
)


def _parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime; None if absent or malformed."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        return None
    text = value.upper().replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python wants at most 6 fractional digits
        digits = re.match(r"\d+", rest)
        assert digits is not None
        text = f"{head}.{digits.group()[:6].ljust(6, '0')}{rest[digits.end() :]}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery's duration.HumanDuration, as kubectl shows ages."""
    whole = int(seconds)  # truncation toward zero, as Go's int(d.Seconds())
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 60 * 2:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(value: Any, now: datetime) -> str:
    """translateTimestampSince: ``<unknown>`` for a missing time, else the age."""
    moment = _parse_time(value)
    if moment is None:
        return "<unknown>"
    return human_duration((now - moment).total_seconds())


# --- custom resources --------------------------------------------------------------------------------


def column_specs_for_crd_version(version: Mapping[str, Any]) -> list[ColumnSpec]:
    """Columns of one CRD version (an entry of ``spec.versions``), Name first.

    Raises ``JSONPathError`` for a printer column whose ``jsonPath`` does not parse.
    """
    printer_columns = version.get("additionalPrinterColumns") or [
        {
            "name": "Age",
            "type": "date",
            "jsonPath": ".metadata.creationTimestamp",
            "description": CREATION_TIMESTAMP_DESCRIPTION,
        }
    ]
    specs = [NAME_COLUMN]
    for column in printer_columns:
        json_path = str(column.get("jsonPath") or column.get("JSONPath") or "")
        compile_path(json_path)  # reject it now, as kube-apiserver does when serving the CRD
        specs.append(
            ColumnSpec(
                name=str(column["name"]),
                type=str(column.get("type", "string")),
                format=str(column.get("format") or ""),
                description=str(
                    column.get("description") or f"Custom resource definition column (in JSONPath format): {json_path}"
                ),
                priority=int(column.get("priority") or 0),
                json_path=json_path,
            )
        )
    return specs


def columns_for_crd_version(version: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``columnDefinitions`` kube-apiserver serves for one CRD version."""
    return [spec.definition() for spec in column_specs_for_crd_version(version)]


def _json_path_cell(spec: ColumnSpec, obj: Mapping[str, Any], now: datetime) -> Any:
    assert spec.json_path is not None
    try:
        found = compile_path(spec.json_path)(obj)
    except (JSONPathError, TypeError):
        return None
    if not found:
        return None
    value = found[0]  # "we only support simple JSON path": the first match is the cell
    if spec.type == "string":
        # jsonpath.PrintResults on reflect.ValueOf(nil) prints text/template's "<no value>"
        return "<no value>" if value is None else format_text(value)
    return _typed_cell(spec.type, value, now)


def _typed_cell(column_type: str, value: Any, now: datetime) -> Any:
    """cellForJSONValue of apiextensions' table convertor."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if column_type == "integer" and is_number:
        return int(value)
    if column_type == "number" and is_number:
        return float(value)
    if column_type == "boolean" and isinstance(value, bool):
        return value
    if column_type == "date" and isinstance(value, str):
        if value in ("", "null"):
            return "<unknown>"
        moment = _parse_time(value)
        return "<invalid>" if moment is None else human_duration((now - moment).total_seconds())
    return None


# --- built-in printers -------------------------------------------------------------------------------


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _name_cell(obj: Mapping[str, Any], _now: datetime) -> Any:
    return _text(_get(obj, "metadata", "name"))


def _age_cell(obj: Mapping[str, Any], now: datetime) -> Any:
    return _age(_get(obj, "metadata", "creationTimestamp"), now)


def _created_at_cell(obj: Mapping[str, Any], _now: datetime) -> Any:
    moment = _parse_time(_get(obj, "metadata", "creationTimestamp"))
    if moment is None:
        return "0001-01-01T00:00:00Z"  # Go's zero time, formatted RFC 3339
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node_status(obj: Mapping[str, Any], _now: datetime) -> Any:
    status: list[str] = []
    conditions = _get(obj, "status", "conditions")
    ready = None
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            ready = condition  # the last one wins, as in the printer's condition map
    if ready is not None:
        status.append("Ready" if ready.get("status") == "True" else "NotReady")
    else:
        status.append("Unknown")
    if _get(obj, "spec", "unschedulable") is True:
        status.append("SchedulingDisabled")
    return ",".join(status)


_ROLE_PREFIX: Final = "node-role.kubernetes.io/"


def _node_roles(obj: Mapping[str, Any], _now: datetime) -> Any:
    roles: set[str] = set()
    labels = _get(obj, "metadata", "labels")
    for key, value in (labels if isinstance(labels, Mapping) else {}).items():
        if key.startswith(_ROLE_PREFIX) and key[len(_ROLE_PREFIX) :]:
            roles.add(key[len(_ROLE_PREFIX) :])
        elif key == "kubernetes.io/role" and value:
            roles.add(str(value))
    return ",".join(sorted(roles)) or "<none>"


def _node_address(kind: str) -> CellFunction:
    def cell(obj: Mapping[str, Any], _now: datetime) -> Any:
        addresses = _get(obj, "status", "addresses")
        for address in addresses if isinstance(addresses, list) else []:
            if isinstance(address, Mapping) and address.get("type") == kind:
                return _text(address.get("address"))
        return "<none>"

    return cell


def _node_info(key: str, missing: str = "<unknown>") -> CellFunction:
    def cell(obj: Mapping[str, Any], _now: datetime) -> Any:
        return _text(_get(obj, "status", "nodeInfo", key)) or missing

    return cell


def _event_field(obj: Mapping[str, Any], core: str, events_v1: str) -> Any:
    """A core/v1 Event field, or its events.k8s.io/v1 counterpart."""
    value = obj.get(core)
    return obj.get(events_v1) if value in (None, "") else value


def _event_times(obj: Mapping[str, Any], now: datetime) -> tuple[str, str, int]:
    """(last seen, first seen, count) as kube-apiserver's event printer computes them."""
    first_time = _event_field(obj, "firstTimestamp", "deprecatedFirstTimestamp")
    first = _age(first_time, now) if _parse_time(first_time) else _age(obj.get("eventTime"), now)
    last_time = _event_field(obj, "lastTimestamp", "deprecatedLastTimestamp")
    last = _age(last_time, now) if _parse_time(last_time) else first
    raw_count = _event_field(obj, "count", "deprecatedCount")
    count = raw_count if isinstance(raw_count, int) and not isinstance(raw_count, bool) else 0
    series = obj.get("series")
    if isinstance(series, Mapping):
        last = _age(series.get("lastObservedTime"), now)
        series_count = series.get("count")
        count = series_count if isinstance(series_count, int) else count
    elif count > 1:
        last = f"{last} (x{count} over {first})"
    return last, first, count


def _event_object(obj: Mapping[str, Any], _now: datetime) -> Any:
    involved = _event_field(obj, "involvedObject", "regarding")
    involved = involved if isinstance(involved, Mapping) else {}
    kind = _text(involved.get("kind")).lower()
    name = _text(involved.get("name"))
    return f"{kind}/{name}" if name else kind


def _event_subobject(obj: Mapping[str, Any], _now: datetime) -> Any:
    involved = _event_field(obj, "involvedObject", "regarding")
    return _text(involved.get("fieldPath")) if isinstance(involved, Mapping) else ""


def _event_source(obj: Mapping[str, Any], _now: datetime) -> Any:
    source = _event_field(obj, "source", "deprecatedSource")
    source = source if isinstance(source, Mapping) else {}
    component = _text(source.get("component")) or _text(obj.get("reportingController"))
    instance = _text(source.get("host")) or _text(obj.get("reportingInstance"))
    return f"{component}, {instance}" if instance else component


def _event_columns() -> list[ColumnSpec]:
    def last_seen(obj: Mapping[str, Any], now: datetime) -> Any:
        return _event_times(obj, now)[0]

    def first_seen(obj: Mapping[str, Any], now: datetime) -> Any:
        return _event_times(obj, now)[1]

    def count(obj: Mapping[str, Any], now: datetime) -> Any:
        return _event_times(obj, now)[2]

    def message(obj: Mapping[str, Any], _now: datetime) -> Any:
        return _text(_event_field(obj, "message", "note")).strip()

    def plain(key: str) -> CellFunction:
        return lambda obj, _now: _text(obj.get(key))

    return [
        ColumnSpec("Last Seen", "string", description="The time at which the most recent occurrence of this "
                   "event was recorded.", cell=last_seen),
        ColumnSpec("Type", "string", description="Type of this event (Normal, Warning), new types could be "
                   "added in the future", cell=plain("type")),
        ColumnSpec("Reason", "string", description="This should be a short, machine understandable string that "
                   "gives the reason for the transition into the object's current status.", cell=plain("reason")),
        ColumnSpec("Object", "string", description="The object that this event is about.", cell=_event_object),
        ColumnSpec("Subobject", "string", priority=1, description="If referring to a piece of an object instead "
                   "of an entire object, this string should contain a valid JSON/Go field access statement.",
                   cell=_event_subobject),
        ColumnSpec("Source", "string", priority=1, description="The component reporting this event. Should be a "
                   "short machine understandable string.", cell=_event_source),
        ColumnSpec("Message", "string", description="A human-readable description of the status of this "
                   "operation.", cell=message),
        ColumnSpec("First Seen", "string", priority=1, description="The time at which the event was first "
                   "recorded. (Time of server receipt is in TypeMeta.)", cell=first_seen),
        ColumnSpec("Count", "string", priority=1, description="The number of times this event has occurred.",
                   cell=count),
        ColumnSpec("Name", "string", "name", NAME_DESCRIPTION, priority=1, cell=_name_cell),
    ]  # fmt: skip


def _age_column() -> ColumnSpec:
    return ColumnSpec("Age", "string", description=CREATION_TIMESTAMP_DESCRIPTION, cell=_age_cell)


def columns_for_builtin(plural: str) -> list[ColumnSpec]:
    """Columns kube-apiserver's printers give a built-in resource, by its plural name."""
    if plural == "nodes":
        return [
            NAME_COLUMN,
            ColumnSpec("Status", "string", description="The status of the node", cell=_node_status),
            ColumnSpec("Roles", "string", description="The roles of the node", cell=_node_roles),
            _age_column(),
            ColumnSpec("Version", "string", description="Kubelet Version reported by the node.",
                       cell=_node_info("kubeletVersion", "")),
            ColumnSpec("Internal-IP", "string", priority=1, description="List of addresses reachable to the node.",
                       cell=_node_address("InternalIP")),
            ColumnSpec("External-IP", "string", priority=1, description="List of addresses reachable to the node.",
                       cell=_node_address("ExternalIP")),
            ColumnSpec("OS-Image", "string", priority=1, description="OS Image reported by the node from "
                       "/etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).", cell=_node_info("osImage")),
            ColumnSpec("Kernel-Version", "string", priority=1, description="Kernel Version reported by the node "
                       "from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).", cell=_node_info("kernelVersion")),
            ColumnSpec("Container-Runtime", "string", priority=1, description="ContainerRuntime Version reported "
                       "by the node through runtime remote API (e.g. containerd://1.4.2).",
                       cell=_node_info("containerRuntimeVersion")),
        ]  # fmt: skip
    if plural == "namespaces":
        return [
            NAME_COLUMN,
            ColumnSpec("Status", "string", description="The status of the namespace",
                       cell=lambda obj, _now: _text(_get(obj, "status", "phase"))),
            _age_column(),
        ]  # fmt: skip
    if plural == "events":
        return _event_columns()
    if plural == "secrets":
        return [
            NAME_COLUMN,
            ColumnSpec("Type", "string", description="Used to facilitate programmatic handling of secret data.",
                       cell=lambda obj, _now: _text(obj.get("type"))),
            ColumnSpec("Data", "string", description="Data contains the secret data.",
                       cell=lambda obj, _now: len(obj.get("data") or {})),
            _age_column(),
        ]  # fmt: skip
    if plural == "leases":
        return [
            NAME_COLUMN,
            ColumnSpec("Holder", "string", description="holderIdentity contains the identity of the holder of a "
                       "current lease.", cell=lambda obj, _now: _text(_get(obj, "spec", "holderIdentity"))),
            _age_column(),
        ]  # fmt: skip
    # rest.NewDefaultTableConvertor: the creation time stays an RFC 3339 string in a date column.
    return [
        NAME_COLUMN,
        ColumnSpec("Created At", "date", description=CREATION_TIMESTAMP_DESCRIPTION, cell=_created_at_cell),
    ]


# --- rendering ---------------------------------------------------------------------------------------


def _cell(spec: ColumnSpec, obj: Mapping[str, Any], now: datetime) -> Any:
    if spec.cell is not None:
        return spec.cell(obj, now)
    if spec.json_path is not None:
        return _json_path_cell(spec, obj, now)
    return _name_cell(obj, now)


def _row_object(obj: Mapping[str, Any], include_object: str) -> Any:
    if include_object == INCLUDE_NONE:
        return None
    if include_object == INCLUDE_OBJECT:
        return copy.deepcopy(dict(obj))
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": copy.deepcopy(obj.get("metadata") or {}),
    }


def _check_include(include_object: str) -> str:
    chosen = include_object or INCLUDE_METADATA
    if chosen not in _INCLUDE_CHOICES:
        raise ValueError(f"includeObject must be one of {', '.join(_INCLUDE_CHOICES)}, not {include_object!r}")
    return chosen


def render_row(
    columns_spec: Sequence[ColumnSpec],
    obj: Mapping[str, Any],
    *,
    include_object: str = INCLUDE_METADATA,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One ``TableRow``: ``{"cells": [...], "object": ...}``."""
    chosen = _check_include(include_object)
    moment = now or datetime.now(UTC)
    return {
        "cells": [_cell(spec, obj, moment) for spec in columns_spec],
        "object": _row_object(obj, chosen),
    }


def render_table(
    columns_spec: Sequence[ColumnSpec],
    objects: Sequence[Mapping[str, Any]],
    *,
    include_object: str = INCLUDE_METADATA,
    resource_version: str = "",
    continue_token: str = "",
    no_headers: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` Table of ``objects`` (one object for a GET, the items of a list).

    ``include_object`` is the ``includeObject`` query parameter (``None``, ``Metadata`` (the
    default) or ``Object``); ``no_headers`` is ``TableOptions.noHeaders`` (``columnDefinitions``
    then is null). ``ValueError`` for an unknown ``include_object``.
    """
    chosen = _check_include(include_object)
    moment = now or datetime.now(UTC)
    metadata: dict[str, Any] = {}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": None if no_headers else [spec.definition() for spec in columns_spec],
        "rows": [render_row(columns_spec, obj, include_object=chosen, now=moment) for obj in objects],
    }
