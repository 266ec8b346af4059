"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a strategic-merge subset.

Strategic merge covers what kubectl and controllers send for core kinds: maps merge, `null` deletes,
lists of maps merge by their patch merge key (node conditions by `type`), `$patch: delete|replace`,
`$retainKeys`, `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>`. Lists without a
merge key are replaced, as their Go types say.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from kube_emulator import errors

JSON = dict[str, Any]
MergeKeys = Mapping[str, str | tuple[str, ...]]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null removes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: JSON = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- JSON patch ---------------------------------------------------------------------------------


def _rejected(detail: str, field: str = "") -> errors.ApiError:
    """kube-apiserver answers a JSON patch that cannot apply with a generic 422 (NewGenericServerResponse)
    that says nothing more: `detail` and `field` only tell the emulator's reader (and its logs) why."""
    return errors.ApiError(422, "the server rejected our request due to an error in our request", "Invalid", {})


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _rejected(f"JSON pointer must start with '/': {path!r}", path)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, path: str, *, for_add: bool = False) -> int:
    if for_add and token == "-":
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise _rejected(f"invalid array index {token!r} in {path}", path)
    index = int(token)
    if index > len(container) or (index == len(container) and not for_add):
        raise _rejected(f"array index {index} out of bounds in {path}", path)
    return index


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise _rejected(f"doc is missing path: {path}", path)
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, path)]
        else:
            raise _rejected(f"doc is missing path: {path}", path)
    return node


def _get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _rejected(f"doc is missing path: {path}", path)
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, path)]
    raise _rejected(f"doc is missing path: {path}", path)


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = _parent(doc, tokens, path)
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, tokens[-1], path, for_add=True), value)
    else:
        raise _rejected(f"doc is missing path: {path}", path)
    return doc


def _remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise _rejected("cannot remove the whole document", path)
    parent = _parent(doc, tokens, path)
    if isinstance(parent, dict):
        if tokens[-1] not in parent:
            raise _rejected(f"unable to remove nonexistent key: {tokens[-1]}: missing value", path)
        del parent[tokens[-1]]
    elif isinstance(parent, list):
        del parent[_index(parent, tokens[-1], path)]
    else:
        raise _rejected(f"doc is missing path: {path}", path)
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902, including `test` (kopf guards its JSON patches with a test of the resourceVersion)."""
    if not isinstance(ops, list):
        raise errors.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, Mapping) or "op" not in op or "path" not in op:
            raise errors.bad_request(f"invalid JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise _rejected(f"missing value for {kind} operation at {path}", path)
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)  # must exist
            doc = _add(_remove(doc, path), path, copy.deepcopy(op["value"])) if _pointer(path) else op["value"]
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise _rejected(f"missing from for {kind} operation at {path}", path)
            value = copy.deepcopy(_get(doc, source))
            if kind == "move":
                doc = _remove(doc, source)
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise _rejected(f"testing value {path} failed: test failed", path)
        else:
            raise errors.bad_request(f"Unexpected kind: {kind}")
    return doc


# --- strategic merge ----------------------------------------------------------------------------


def _key_fields(spec: str | tuple[str, ...]) -> tuple[str, ...]:
    return (spec,) if isinstance(spec, str) and spec else tuple(spec) if isinstance(spec, tuple) else ()


def _identity(item: Any, fields: tuple[str, ...]) -> tuple[Any, ...] | None:
    if not isinstance(item, Mapping):
        return None
    return tuple(repr(item.get(f)) for f in fields)


def _strip(value: Any) -> Any:
    """A patch value without directives, as it ends up stored when nothing merges it."""
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, Mapping) and v.get("$patch") == "delete")]
    return value


def strategic_merge(target: Any, patch: Any, merge_keys: MergeKeys, path: str = "") -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip({k: v for k, v in patch.items() if k != "$patch"})
    if directive not in (None, "merge", "delete"):
        raise errors.bad_request(f"Unknown patch type: {directive}")
    result: JSON = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            drop = value if isinstance(value, list) else []
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in drop]
            continue
        child = f"{path}.{key}" if path else key
        if value is None or (isinstance(value, Mapping) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, Mapping):
            result[key] = strategic_merge(result.get(key), value, merge_keys, child)
        elif isinstance(value, list):
            order = patch.get(f"$setElementOrder/{key}")
            result[key] = _merge_list(result.get(key), value, merge_keys, child, order)
        else:
            result[key] = value
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(target: Any, patch: list[Any], merge_keys: MergeKeys, path: str, order: Any) -> list[Any]:
    if path not in merge_keys:
        return [_strip(v) for v in patch]
    fields = _key_fields(merge_keys[path])
    current = list(target) if isinstance(target, list) else []
    if not fields:  # a set of scalars: union, keeping the existing order
        merged = current + [v for v in patch if v not in current]
        return _ordered(merged, order, ())
    if any(isinstance(v, Mapping) and v.get("$patch") == "replace" for v in patch):
        return [_strip(v) for v in patch if not (isinstance(v, Mapping) and v.get("$patch") == "replace")]
    for item in patch:
        ident = _identity(item, fields)
        position = next((i for i, v in enumerate(current) if _identity(v, fields) == ident), None)
        if isinstance(item, Mapping) and item.get("$patch") == "delete":
            if position is not None:
                del current[position]
        elif position is None:
            current.append(_strip(item))
        else:
            current[position] = strategic_merge(current[position], item, merge_keys, path)
    return _ordered(current, order, fields)


def _ordered(items: list[Any], order: Any, fields: tuple[str, ...]) -> list[Any]:
    """Apply `$setElementOrder`: listed elements first in that order, the others after."""
    if not isinstance(order, Sequence) or isinstance(order, str):
        return items

    def ident(value: Any) -> Any:
        return _identity(value, fields) if fields else repr(value)

    rank = {ident(v): i for i, v in enumerate(order)}
    return sorted(items, key=lambda v: rank.get(ident(v), len(rank)))


def schema_list_keys(schema: Mapping[str, Any] | None, path: str = "") -> dict[str, str | tuple[str, ...]]:
    """List merge keys a CRD schema declares (x-kubernetes-list-type map/set), for server-side apply."""
    found: dict[str, str | tuple[str, ...]] = {}
    if not isinstance(schema, Mapping):
        return found
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        found[path] = tuple(schema.get("x-kubernetes-list-map-keys") or ())
    elif list_type == "set":
        found[path] = ()
    items = schema.get("items")
    if isinstance(items, Mapping):
        found.update(schema_list_keys(items, path))
    for name, prop in (schema.get("properties") or {}).items():
        found.update(schema_list_keys(prop, f"{path}.{name}" if path else name))
    return found
