"""Protobuf request bodies, for the few kinds kubectl's typed commands send that way.

`kubectl create namespace`, `kubectl create configmap` and `kubectl create secret` (and Helm, for its
release Secrets and their DeleteOptions) encode their body as
`application/vnd.kubernetes.protobuf` (a `k8s\\0` magic, then a runtime.Unknown wrapping the
object) and do not fall back to JSON on a 415. Rather than a protobuf library and generated types,
this reads the wire format against hand-written field tables of just those kinds (field numbers
from k8s.io/api generated.proto). Everything else answers 415, like a server without protobuf.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from typing import Any

from kube_emulator import errors

JSON = dict[str, Any]
MAGIC = b"k8s\x00"
# A field table: number -> (JSON name, kind); kind is a scalar kind name or a nested table.
Table = Mapping[int, tuple[str, Any]]

_TIME: Table = {1: ("seconds", "int"), 2: ("nanos", "int")}
_OWNER_REFERENCE: Table = {1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
                           5: ("apiVersion", "string"), 6: ("controller", "bool"),
                           7: ("blockOwnerDeletion", "bool")}
_OBJECT_META: Table = {
    1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"), 4: ("selfLink", "string"),
    5: ("uid", "string"), 6: ("resourceVersion", "string"), 7: ("generation", "int"),
    8: ("creationTimestamp", _TIME), 9: ("deletionTimestamp", _TIME), 10: ("deletionGracePeriodSeconds", "int"),
    11: ("labels", "map"), 12: ("annotations", "map"), 13: ("ownerReferences", [_OWNER_REFERENCE]),
    14: ("finalizers", ["string"]),
}
KINDS: Mapping[tuple[str, str], Table] = {
    ("v1", "Namespace"): {1: ("metadata", _OBJECT_META), 2: ("spec", {1: ("finalizers", ["string"])}),
                          3: ("status", {1: ("phase", "string")})},
    ("v1", "ConfigMap"): {1: ("metadata", _OBJECT_META), 2: ("data", "map"), 3: ("binaryData", "bytesmap"),
                          4: ("immutable", "bool")},
    ("v1", "Secret"): {1: ("metadata", _OBJECT_META), 2: ("data", "bytesmap"), 3: ("type", "string"),
                       4: ("stringData", "map"), 5: ("immutable", "bool")},
    # The body of a typed client's DELETE (Helm deletes its release Secrets so).
    ("v1", "DeleteOptions"): {1: ("gracePeriodSeconds", "int"),
                              2: ("preconditions", {1: ("uid", "string"), 2: ("resourceVersion", "string")}),
                              3: ("orphanDependents", "bool"), 4: ("propagationPolicy", "string"),
                              5: ("dryRun", ["string"])},
}
_UNKNOWN: Table = {1: ("typeMeta", {1: ("apiVersion", "string"), 2: ("kind", "string")}), 2: ("raw", "bytes"),
                   3: ("contentEncoding", "string"), 4: ("contentType", "string")}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs: an int for varints, bytes for length-delimited fields."""
    found: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            found.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            found.append((number, data[pos:pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return found


def _time(fields: JSON) -> str | None:
    if not fields.get("seconds"):
        return None
    moment = datetime.datetime.fromtimestamp(int(fields["seconds"]), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _decode(data: bytes, table: Table) -> JSON:
    out: JSON = {}
    for number, value in _fields(data):
        if number not in table:
            continue
        name, kind = table[number]
        repeated = isinstance(kind, list)
        item_kind = kind[0] if repeated else kind
        if item_kind in ("map", "bytesmap"):
            assert isinstance(value, bytes)
            entry = {n: v if isinstance(v, bytes) else b"" for n, v in _fields(value)}
            key, raw = entry.get(1, b"").decode(), entry.get(2, b"")
            out.setdefault(name, {})[key] = base64.b64encode(raw).decode() if item_kind == "bytesmap" \
                else raw.decode()
            continue
        if item_kind == "string":
            decoded: Any = bytes(value).decode() if isinstance(value, bytes) else str(value)
        elif item_kind == "bytes":
            decoded = value
        elif item_kind == "int":
            decoded = value if isinstance(value, int) else 0
        elif item_kind == "bool":
            decoded = bool(value)
        else:
            assert isinstance(value, bytes)
            decoded = _decode(value, item_kind)
            if item_kind is _TIME:
                decoded = _time(decoded)
        if repeated:
            out.setdefault(name, []).append(decoded)
        else:
            out[name] = decoded
    # Go writes empty optional strings; JSON would omit them.
    return {k: v for k, v in out.items() if v not in ("", None, {})}


def decode(body: bytes) -> JSON:
    """The JSON object of a protobuf-encoded request body; 415 for kinds this server cannot read."""
    if not body.startswith(MAGIC):
        raise errors.bad_request("protobuf body without the k8s envelope")
    try:
        envelope = _decode(body[len(MAGIC):], _UNKNOWN)
        type_meta = envelope.get("typeMeta") or {}
        key = (type_meta.get("apiVersion", ""), type_meta.get("kind", ""))
        table = KINDS.get(key)
        if table is None:
            raise errors.unsupported_media_type("application/vnd.kubernetes.protobuf",
                                                ["application/json", "application/yaml"])
        obj = _decode(bytes(envelope.get("raw", b"")), table)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"error decoding protobuf body: {exc}") from None
    return {"apiVersion": key[0], "kind": key[1], **obj}
