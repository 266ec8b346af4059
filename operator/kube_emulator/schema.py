"""Admission of custom objects against a CRD version's ``openAPIV3Schema``, as kube-apiserver does it.

The order and the wording follow apiextensions-apiserver and kube-openapi:

1. pruning drops fields the schema does not declare (``prune``),
2. defaulting fills ``default`` values and drops non-nullable nulls that have no default
   (``apply_defaults``),
3. validation reports kube-openapi schema errors, then embedded-resource errors, then
   ``x-kubernetes-list-type`` duplicates (``validate``), each as a ``Cause`` whose ``field`` is the
   path kube-apiserver reports (``spec.disks[0].bus``) and whose ``message`` is the error body
   kube-apiserver writes in ``Status.details.causes``.

Not reproduced (deliberately):

- ``x-kubernetes-validations`` (CEL rules) are ignored: no CEL evaluator is implemented.
- ``uniqueItems`` and ``patternProperties`` are ignored (structural schemas forbid them).
- ``metadata`` is neither pruned nor defaulted here; the server validates it as ObjectMeta.
  Constraints the schema puts on ``metadata.name`` are still checked.
- Only a few string formats are checked (uuid, uuid3/4/5, ipv4, ipv6, cidr, date, date-time,
  byte); other formats are ignored, as kube-apiserver ignores unsupported ones.
- Validation ratcheting on update (unchanged invalid fields pass) is not done.
- kube-openapi visits properties in Go map order (random); here they are visited in schema order.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final, TypeGuard

__all__ = [
    "Cause",
    "admit",
    "apply_defaults",
    "invalid_status",
    "message_for",
    "prune",
    "unknown_fields",
    "validate",
]

Schema = Mapping[str, Any]

# Keys a resource root (and an embedded resource) keeps whatever its schema says.
_RESOURCE_KEYS: Final = frozenset({"apiVersion", "kind", "metadata"})


@dataclass(frozen=True)
class Cause:
    """One entry of ``Status.details.causes``: what kube-apiserver reports for one field error."""

    reason: str  # e.g. FieldValueRequired, FieldValueInvalid, FieldValueNotSupported
    message: str  # the error body, e.g. 'Unsupported value: "foo": supported values: "a", "b"'
    field: str  # e.g. spec.disks[0].bus

    def __str__(self) -> str:
        # field.Error.Error() in apimachinery: "<field>: <body>"
        return f"{self.field}: {self.message}"

    def as_status_cause(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


# --- field.Error types of k8s.io/apimachinery/pkg/util/validation/field ---------------------------


@dataclass(frozen=True)
class _ErrorType:
    reason: str
    text: str
    shows_value: bool


_REQUIRED: Final = _ErrorType("FieldValueRequired", "Required value", False)
_INVALID: Final = _ErrorType("FieldValueInvalid", "Invalid value", True)
_TYPE_INVALID: Final = _ErrorType("FieldValueTypeInvalid", "Invalid value", True)
_NOT_SUPPORTED: Final = _ErrorType("FieldValueNotSupported", "Unsupported value", True)
_DUPLICATE: Final = _ErrorType("FieldValueDuplicate", "Duplicate value", True)
_TOO_LONG: Final = _ErrorType("FieldValueTooLong", "Too long", False)
_TOO_MANY: Final = _ErrorType("FieldValueTooMany", "Too many", True)

# kube-openapi errors that are not *errors.Validation reach the field-error conversion with a
# nil *field.Path, whose String() is "<nil>"; kube-apiserver reports exactly that as the field.
_NIL_PATH: Final = "<nil>"


def _cause(kind: _ErrorType, field: str, value: Any = None, detail: str = "") -> Cause:
    body = kind.text
    if kind.shows_value:
        body += ": " + _go_error_value(value)
    if detail:
        body += ": " + detail
    return Cause(kind.reason, body, field)


def _field_of(name: str) -> str:
    """Field path of a kube-openapi error name (leading '.' trimmed, empty means the root)."""
    trimmed = name.removeprefix(".")
    return trimmed if trimmed else _NIL_PATH


# --- Go formatting, so that messages read as kube-apiserver writes them -----------------------------


def _go_float(value: float) -> str:
    """Go's %v for a float64 (strconv 'g' with the shortest representation)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent  # position of the decimal point relative to the digits
    exp10 = point - 1
    prefix = "-" if sign else ""
    if exp10 < -4 or exp10 >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return f"{prefix}{digits[:point]}.{digits[point:]}"


_GO_ESCAPES: Final = {
    "\a": r"\a",
    "\b": r"\b",
    "\f": r"\f",
    "\n": r"\n",
    "\r": r"\r",
    "\t": r"\t",
    "\v": r"\v",
    '"': r"\"",
    "\\": r"\\",
}


def _go_quote(text: str) -> str:
    """Go's strconv.Quote (%q)."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not char.isprintable():
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _go_sharp_v(value: Any) -> str:
    """Go's %#v of a decoded JSON value held in an interface{}."""
    if value is None:
        return "interface {}(nil)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_quote(value)
    if isinstance(value, Mapping):
        entries = ", ".join(f"{_go_quote(str(k))}:{_go_sharp_v(value[k])}" for k in sorted(value))
        return "map[string]interface {}{" + entries + "}"
    if isinstance(value, (list, tuple)):
        return "[]interface {}{" + ", ".join(_go_sharp_v(v) for v in value) + "}"
    return repr(value)


def _go_error_value(value: Any) -> str:
    """How field.Error.ErrorBody() prints a bad value."""
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_quote(value)
    if isinstance(value, Mapping | list | tuple):
        return _go_json(value)  # encoding/json for maps and slices, as ErrorBody tries first
    return _go_sharp_v(value)


def _go_json(value: Any) -> str:
    """encoding/json's rendering of a scalar enum value (used for non-string enum members)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return _go_quote(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_go_quote(str(k))}:{_go_json(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_go_json(v) for v in value) + "]"
    return repr(value)


# --- JSON kinds and schema accessors -----------------------------------------------------------------


def _kind_of(value: Any) -> str:
    """JSON type name of a decoded value, as kube-openapi names it in type errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _declared_types(schema: Schema) -> list[str]:
    if schema.get("x-kubernetes-int-or-string"):
        # apiextensions converts int-or-string to the type list [integer, string] for validation.
        return ["integer", "string"]
    declared = schema.get("type")
    if isinstance(declared, str):
        return [declared] if declared else []
    if isinstance(declared, (list, tuple)):
        return [str(t) for t in declared]
    return []


def _properties(schema: Schema | None) -> Mapping[str, Any]:
    if schema is None:
        return {}
    props = schema.get("properties")
    return props if isinstance(props, Mapping) else {}


def _additional_schema(schema: Schema | None) -> Schema | None:
    """The additionalProperties schema; ``true`` counts as an empty (anything-goes) schema."""
    if schema is None:
        return None
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        return extra
    if extra is True:
        return {"x-kubernetes-preserve-unknown-fields": True}
    return None


def _items_schema(schema: Schema | None) -> Schema | None:
    if schema is None:
        return None
    items = schema.get("items")
    return items if isinstance(items, Mapping) else None


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- pruning ---------------------------------------------------------------------------------------


def prune(schema: Schema, obj: Any) -> Any:
    """A copy of ``obj`` without the fields the schema does not declare.

    ``x-kubernetes-preserve-unknown-fields`` keeps unknown fields (known ones are still pruned
    inside); ``apiVersion``, ``kind`` and ``metadata`` are kept at the root and in embedded
    resources.
    """
    result = copy.deepcopy(obj)
    _prune(result, schema, "", True, None)
    return result


def unknown_fields(schema: Schema, obj: Any) -> list[str]:
    """Paths of the fields ``prune`` drops, for ``Warning: unknown field "spec.foo"`` headers."""
    dropped: list[str] = []
    _prune(copy.deepcopy(obj), schema, "", True, dropped)
    return dropped


def _prune(value: Any, schema: Schema | None, path: str, embedded: bool, dropped: list[str] | None) -> None:
    if schema is not None and schema.get("x-kubernetes-preserve-unknown-fields"):
        _prune_known_only(value, schema, path, embedded, dropped)
        return
    if isinstance(value, dict):
        embedded = embedded or bool(schema and schema.get("x-kubernetes-embedded-resource"))
        props = _properties(schema)
        extra = _additional_schema(schema)
        for key in list(value):
            if embedded and key in _RESOURCE_KEYS:
                continue
            if key in props:
                _prune(value[key], props[key], _child(path, key), False, dropped)
            elif extra is not None:
                _prune(value[key], extra, _child(path, key), False, dropped)
            else:
                if dropped is not None:
                    dropped.append(_child(path, key))
                del value[key]
    elif isinstance(value, list):
        items = _items_schema(schema)
        for index, item in enumerate(value):
            _prune(item, items, f"{path}[{index}]", False, dropped)


def _prune_known_only(value: Any, schema: Schema, path: str, embedded: bool, dropped: list[str] | None) -> None:
    if isinstance(value, dict):
        embedded = embedded or bool(schema.get("x-kubernetes-embedded-resource"))
        props = _properties(schema)
        extra = _additional_schema(schema)
        for key, item in value.items():
            if embedded and key in _RESOURCE_KEYS:
                continue
            if key in props:
                _prune(item, props[key], _child(path, key), False, dropped)
            elif extra is not None:
                _prune(item, extra, _child(path, key), False, dropped)
    elif isinstance(value, list):
        items = _items_schema(schema)
        if items is not None:
            for index, item in enumerate(value):
                _prune_known_only(item, items, f"{path}[{index}]", False, dropped)


# --- defaulting --------------------------------------------------------------------------------------


def apply_defaults(schema: Schema, obj: Any) -> Any:
    """A copy of ``obj`` with the schema's ``default`` values applied, at every depth.

    As kube-apiserver does, a ``null`` in a non-nullable field is replaced by the default, or
    dropped when there is none; defaults are themselves defaulted further down. The root's
    ``apiVersion``, ``kind`` and ``metadata`` are left alone.
    """
    result = copy.deepcopy(obj)
    _default(result, schema, True)
    return result


def _non_nullable_null(value: Any, schema: Schema) -> bool:
    return value is None and not schema.get("nullable")


def _default(value: Any, schema: Schema | None, root: bool) -> None:
    if schema is None:
        return
    if isinstance(value, dict):
        props = _properties(schema)
        for key, prop in props.items():
            if root and key in _RESOURCE_KEYS:
                continue
            if "default" in prop:
                if key not in value or _non_nullable_null(value[key], prop):
                    value[key] = copy.deepcopy(prop["default"])
            elif key in value and _non_nullable_null(value[key], prop):
                del value[key]
        extra = _additional_schema(schema)
        for key in list(value):
            if root and key in _RESOURCE_KEYS:
                continue
            if key in props:
                _default(value[key], props[key], False)
            elif extra is not None:
                if _non_nullable_null(value[key], extra):
                    if "default" not in extra:
                        del value[key]
                        continue
                    value[key] = copy.deepcopy(extra["default"])
                _default(value[key], extra, False)
    elif isinstance(value, list):
        items = _items_schema(schema)
        if items is None:
            return
        for index in range(len(value)):
            if _non_nullable_null(value[index], items) and "default" in items:
                value[index] = copy.deepcopy(items["default"])
            _default(value[index], items, False)


# --- validation: kube-openapi schema checks ----------------------------------------------------------


def validate(schema: Schema, obj: Any, *, path: str = "") -> list[Cause]:
    """Causes for every way ``obj`` violates ``schema``, in kube-apiserver's order.

    ``path`` names where ``obj`` sits (``""`` for a whole object, ``"spec"`` to check a spec
    alone); it prefixes every field path and message.
    """
    causes = _check(schema, obj, path)
    causes += _check_embedded(schema, obj, path)
    causes += _check_list_types(schema, obj, path)
    return causes


def _check(schema: Schema, value: Any, name: str) -> list[Cause]:
    """kube-openapi's SchemaValidator: type, composition, string, format, number, array, enum, object."""
    causes: list[Cause] = []
    types = _declared_types(schema)
    if value is None:
        if types and "null" not in types and not schema.get("nullable"):
            causes.append(_type_error(name, ",".join(types), "null"))
        causes += _check_enum(schema, value, name)
        return causes

    kind = _kind_of(value)
    if types and not _type_matches(types, kind, value):
        causes.append(_type_error(name, ",".join(types), kind))
    causes += _check_composition(schema, value, name)
    if kind == "string":
        causes += _check_string(schema, value, name)
        causes += _check_format(schema, value, name)
    elif kind in ("integer", "number"):
        causes += _check_number(schema, value, name)
    elif kind == "array":
        causes += _check_array(schema, value, name)
    causes += _check_enum(schema, value, name)
    if kind == "object":
        causes += _check_object(schema, value, name)
    return causes


def _type_matches(types: Sequence[str], kind: str, value: Any) -> bool:
    if kind in types:
        return True
    if kind == "integer" and "number" in types:
        return True
    # kube-openapi accepts a float with an integral value (1.0) where an integer is expected
    return kind == "number" and "integer" in types and float(value).is_integer()


def _type_error(name: str, expected: str, actual: str) -> Cause:
    return _cause(
        _TYPE_INVALID, _field_of(name), actual, f"{name} in body must be of type {expected}: {_go_quote(actual)}"
    )


def _check_composition(schema: Schema, value: Any, name: str) -> list[Cause]:
    causes: list[Cause] = []
    any_of = schema.get("anyOf")
    if isinstance(any_of, Sequence) and any_of:
        results: list[list[Cause]] = []
        for sub in any_of:
            result = _check(sub, value, name)
            if not result:
                break
            results.append(result)
        else:
            causes.append(
                _cause(_INVALID, _NIL_PATH, "", f"{_go_quote(name)} must validate at least one schema (anyOf)")
            )
            causes += _fewest(results)
    one_of = schema.get("oneOf")
    if isinstance(one_of, Sequence) and one_of:
        results = [_check(sub, value, name) for sub in one_of]
        valid = sum(1 for result in results if not result)
        if valid != 1:
            found = "Found none valid" if valid == 0 else f"Found {valid} valid alternatives"
            message = f"{_go_quote(name)} must validate one and only one schema (oneOf). {found}"
            causes.append(_cause(_INVALID, _NIL_PATH, "", message))
            if valid == 0:
                causes += _fewest(results)
    all_of = schema.get("allOf")
    if isinstance(all_of, Sequence) and all_of:
        results = [_check(sub, value, name) for sub in all_of]
        for result in results:
            causes += result
        valid = sum(1 for result in results if not result)
        if valid != len(results):
            suffix = ". None validated" if valid == 0 else ""
            message = f"{_go_quote(name)} must validate all the schemas (allOf){suffix}"
            causes.append(_cause(_INVALID, _NIL_PATH, "", message))
    negated = schema.get("not")
    if isinstance(negated, Mapping) and not _check(negated, value, name):
        causes.append(_cause(_INVALID, _NIL_PATH, "", f"{_go_quote(name)} must not validate the schema (not)"))
    return causes


def _fewest(results: Sequence[list[Cause]]) -> list[Cause]:
    """The failures of the alternative that came closest (kube-openapi keeps the best match)."""
    best = results[0]
    for result in results[1:]:
        if len(result) < len(best):
            best = result
    return best


def _check_string(schema: Schema, value: str, name: str) -> list[Cause]:
    # kube-openapi's string validator stops at the first failure: maxLength, minLength, pattern.
    field = _field_of(name)
    max_length = schema.get("maxLength")
    if isinstance(max_length, int) and len(value) > max_length:
        return [_cause(_TOO_LONG, field, value, f"may not be more than {max_length} bytes")]
    min_length = schema.get("minLength")
    if isinstance(min_length, int) and len(value) < min_length:
        return [_cause(_INVALID, field, value, f"{name} in body should be at least {min_length} chars long")]
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and pattern:
        try:
            matched = _compile_pattern(pattern).search(value) is not None
        except re.error as err:
            detail = f"{name} in body should match '{pattern}, but pattern is invalid: {err}'"
            return [_cause(_INVALID, field, value, detail)]
        if not matched:
            return [_cause(_INVALID, field, value, f"{name} in body should match '{pattern}'")]
    return []


@functools.lru_cache(maxsize=1024)
def _compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile an RE2-style (Go regexp) pattern with Python's re, keeping Go's semantics where
    they differ in practice: ``$`` and ``\\z`` mean end of text, classes are ASCII."""
    multiline = "(?m" in pattern
    out: list[str] = []
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            escaped = pattern[index + 1]
            out.append(r"\Z" if escaped == "z" and not in_class else char + escaped)
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # a ']' right after '[' or '[^' is a literal member of the class
            lead = "^]" if pattern.startswith("[^]", index) else "]" if pattern.startswith("[]", index) else ""
            if lead:
                out.append("[" + lead)
                index += 1 + len(lead)
                continue
        elif char == "$" and not multiline:
            out.append(r"\Z")
            index += 1
            continue
        elif char == "(" and pattern.startswith("(?<", index) and pattern[index + 3 : index + 4] not in ("=", "!"):
            out.append("(?P<")
            index += 3
            continue
        out.append(char)
        index += 1
    return re.compile("".join(out), re.ASCII)


_UUID_PATTERNS: Final = {
    "uuid": r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
    "uuid3": r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
    "uuid4": r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$",
    "uuid5": r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$",
}
_DATE_TIME: Final = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?$", re.ASCII
)
_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)


def _is_ip(text: str, version: int) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    # Go's net.ParseIP accepts IPv4-mapped IPv6; strfmt tells the two apart by '.' and ':'.
    return ("." in text) if version == 4 else (":" in text and address.version == 6)


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


def _is_date(text: str) -> bool:
    if not _DATE.match(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _is_date_time(text: str) -> bool:
    match = _DATE_TIME.match(text)
    if not match:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError:
        return False
    return True


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _matches(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(pattern)
    return lambda text: compiled.match(text) is not None


_FORMAT_CHECKS: Final[dict[str, Callable[[str], bool]]] = {
    **{name: _matches(pattern) for name, pattern in _UUID_PATTERNS.items()},
    "ipv4": lambda text: _is_ip(text, 4),
    "ipv6": lambda text: _is_ip(text, 6),
    "cidr": _is_cidr,
    "date": _is_date,
    "date-time": _is_date_time,
    "datetime": _is_date_time,
    "byte": _is_base64,
}


def _check_format(schema: Schema, value: str, name: str) -> list[Cause]:
    fmt = schema.get("format")
    check = _FORMAT_CHECKS.get(fmt) if isinstance(fmt, str) else None
    if check is None or check(value):
        return []
    return [_cause(_TYPE_INVALID, _field_of(name), value, f"{name} in body must be of type {fmt}: {_go_quote(value)}")]


def _check_number(schema: Schema, value: float, name: str) -> list[Cause]:
    # kube-openapi merges multipleOf, then minimum, then maximum failures.
    causes: list[Cause] = []
    field = _field_of(name)
    is_int = isinstance(value, int)

    def bound_text(bound: float) -> str:
        # Integers are checked natively against the bound truncated to int64, and printed so.
        return str(int(bound)) if is_int else _go_float(float(bound))

    def bound_of(bound: float) -> float:
        return int(bound) if is_int else float(bound)

    factor = schema.get("multipleOf")
    if _is_number(factor) and factor > 0:
        if is_int and float(factor).is_integer():
            ok = value % int(factor) == 0
        else:
            quotient = (1 / factor) * value if factor < 1 else value / factor
            ok = float(quotient).is_integer()
        if not ok:
            causes.append(
                _cause(_INVALID, field, value, f"{name} in body should be a multiple of {bound_text(factor)}")
            )
    minimum = schema.get("minimum")
    if _is_number(minimum):
        exclusive = bool(schema.get("exclusiveMinimum"))
        bound = bound_of(minimum)
        if value < bound or (exclusive and value == bound):
            relation = "greater than" if exclusive else "greater than or equal to"
            causes.append(_cause(_INVALID, field, value, f"{name} in body should be {relation} {bound_text(minimum)}"))
    maximum = schema.get("maximum")
    if _is_number(maximum):
        exclusive = bool(schema.get("exclusiveMaximum"))
        bound = bound_of(maximum)
        if value > bound or (exclusive and value == bound):
            relation = "less than" if exclusive else "less than or equal to"
            causes.append(_cause(_INVALID, field, value, f"{name} in body should be {relation} {bound_text(maximum)}"))
    return causes


def _check_array(schema: Schema, value: Sequence[Any], name: str) -> list[Cause]:
    causes: list[Cause] = []
    items = _items_schema(schema)
    if items is not None:
        for index, item in enumerate(value):
            causes += _check(items, item, f"{name}[{index}]")
    field = _field_of(name)
    min_items = schema.get("minItems")
    if isinstance(min_items, int) and len(value) < min_items:
        causes.append(_cause(_INVALID, field, len(value), f"{name} in body should have at least {min_items} items"))
    max_items = schema.get("maxItems")
    if isinstance(max_items, int) and len(value) > max_items:
        causes.append(_cause(_TOO_MANY, field, len(value), f"must have at most {max_items} items"))
    return causes


def _json_equal(left: Any, right: Any) -> bool:
    """Equality of decoded JSON values, numbers compared by value (reflect conversion in Go)."""
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        return len(left) == len(right) and all(_json_equal(a, b) for a, b in zip(left, right, strict=True))
    return type(left) is type(right) and bool(left == right)


def _check_enum(schema: Schema, value: Any, name: str) -> list[Cause]:
    members = schema.get("enum")
    if not isinstance(members, Sequence) or isinstance(members, str) or not members:
        return []
    if value is not None and any(_json_equal(value, member) for member in members):
        return []
    supported = [m if isinstance(m, str) else _go_json(m) for m in members]
    detail = "supported values: " + ", ".join(_go_quote(s) for s in supported)
    return [_cause(_NOT_SUPPORTED, _field_of(name), value, detail)]


def _check_object(schema: Schema, value: Mapping[str, Any], name: str) -> list[Cause]:
    field = _field_of(name)
    count = len(value)
    min_props = schema.get("minProperties")
    if isinstance(min_props, int) and count < min_props:
        return [_cause(_INVALID, field, count, f"{name} in body should have at least {min_props} properties")]
    max_props = schema.get("maxProperties")
    if isinstance(max_props, int) and count > max_props:
        return [_cause(_TOO_MANY, field, count, f"must have at most {max_props} items")]

    causes: list[Cause] = []
    props = _properties(schema)
    extra = schema.get("additionalProperties")
    if extra is False:
        for key in value:
            if key not in props:
                causes.append(_cause(_INVALID, field, key, f"{name}.{key} in body is a forbidden property"))
    elif isinstance(extra, Mapping):
        for key, item in value.items():
            if key not in props:
                causes += _check(extra, item, f"{name}.{key}")
    for key, prop in props.items():
        if key in value:
            causes += _check(prop, value[key], _child(name, key))
    required = schema.get("required")
    if isinstance(required, Sequence) and not isinstance(required, str):
        for key in required:
            if key not in value:
                causes.append(_cause(_REQUIRED, _field_of(f"{name}.{key}")))
    return causes


# --- validation: embedded resources and list types (structural passes, field.Path naming) -----------


def _key_path(path: str, key: str) -> str:
    return f"{path}[{key}]"


def _check_embedded(schema: Schema | None, value: Any, path: str) -> list[Cause]:
    if schema is None:
        return []
    causes: list[Cause] = []
    if isinstance(value, Mapping):
        if schema.get("x-kubernetes-embedded-resource"):
            causes += _check_embedded_resource(value, path)
        props = _properties(schema)
        extra = _additional_schema(schema)
        for key, item in value.items():
            if key in props:
                causes += _check_embedded(props[key], item, _child(path, key))
            elif extra is not None:
                causes += _check_embedded(extra, item, _key_path(path, key))
    elif isinstance(value, list):
        items = _items_schema(schema)
        for index, item in enumerate(value):
            causes += _check_embedded(items, item, f"{path}[{index}]")
    return causes


def _check_embedded_resource(value: Mapping[str, Any], path: str) -> list[Cause]:
    causes: list[Cause] = []
    for key in ("apiVersion", "kind"):
        field = _child(path, key)
        if key not in value:
            causes.append(_cause(_REQUIRED, field, detail="must not be empty"))
        elif not isinstance(value[key], str):
            causes.append(_cause(_INVALID, field, value[key], "must be a string"))
        elif not value[key]:
            causes.append(_cause(_INVALID, field, value[key], "must not be empty"))
        elif key == "apiVersion" and value[key].count("/") > 1:
            causes.append(_cause(_INVALID, field, value[key], f"unexpected GroupVersion string: {value[key]}"))
    return causes


def _check_list_types(schema: Schema | None, value: Any, path: str) -> list[Cause]:
    if schema is None:
        return []
    causes: list[Cause] = []
    if isinstance(value, Mapping):
        props = _properties(schema)
        extra = _additional_schema(schema)
        for key, item in value.items():
            if key in props:
                causes += _check_list_types(props[key], item, _child(path, key))
            elif extra is not None:
                causes += _check_list_types(extra, item, _key_path(path, key))
    elif isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set":
            repeats = _second_occurrences([_identity(item) for item in value])
            causes += [_cause(_DUPLICATE, f"{path}[{i}]", value[i]) for i in repeats]
        elif list_type == "map":
            causes += _check_list_map(schema, value, path)
        items = _items_schema(schema)
        for index, item in enumerate(value):
            causes += _check_list_types(items, item, f"{path}[{index}]")
    return causes


def _identity(value: Any) -> Any:
    """A hashable identity with Go's map-key equality: 1 and 1.0 and True are all different."""
    if isinstance(value, Mapping):
        return ("object", _go_json(value))
    if isinstance(value, (list, tuple)):
        return ("array", _go_json(value))
    return (_kind_of(value), value)


def _second_occurrences(identities: Sequence[Any]) -> list[int]:
    """Indices where an identity is seen for the second time (later repeats are not reported)."""
    counts: dict[Any, int] = {}
    repeats: list[int] = []
    for index, identity in enumerate(identities):
        counts[identity] = counts.get(identity, 0) + 1
        if counts[identity] == 2:
            repeats.append(index)
    return repeats


_UNSPECIFIED: Final = object()


def _check_list_map(schema: Schema, value: list[Any], path: str) -> list[Cause]:
    for index, item in enumerate(value):
        if item is not None and not isinstance(item, Mapping):
            return [_cause(_INVALID, f"{path}[{index}]", item, "must be an object for an array of list-type map")]
    raw_keys = schema.get("x-kubernetes-list-map-keys")
    key_fields = [str(k) for k in raw_keys] if isinstance(raw_keys, Sequence) and not isinstance(raw_keys, str) else []
    if len(value) <= 1 or not key_fields:
        return []
    keys: list[dict[str, Any]] = []
    for item in value:
        keys.append({k: item[k] for k in key_fields if item is not None and k in item})
    if len(key_fields) == 1:
        # a missing key is its own value, distinct from every present one
        single = key_fields[0]
        identities = [_identity(key[single]) if single in key else _UNSPECIFIED for key in keys]
        repeats = _second_occurrences(identities)
    else:
        repeats = _second_occurrences([_identity(key) for key in keys])
    return [_cause(_DUPLICATE, f"{path}[{i}]", keys[i]) for i in repeats]


# --- admission and Status ----------------------------------------------------------------------------


def admit(schema: Schema, obj: Mapping[str, Any]) -> tuple[dict[str, Any], list[Cause]]:
    """Prune, default and validate ``obj`` as kube-apiserver does on create and update.

    Returns the object as it would be stored and the causes of a 422 (empty when valid). The
    root's ``apiVersion``, ``kind`` and ``metadata`` survive pruning and defaulting untouched.
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"a custom object must be a JSON object, not {_kind_of(obj)}")
    admitted: dict[str, Any] = copy.deepcopy(dict(obj))
    _prune(admitted, schema, "", True, None)
    _default(admitted, schema, True)
    return admitted, validate(schema, admitted)


def message_for(kind: str, name: str, causes: Sequence[Cause], *, group: str = "") -> str:
    """The ``Status.message`` of a 422: ``Kind.group "name" is invalid: [f: msg, ...]``.

    ``kind`` may already be qualified (``VirtualMachine.virt.libvirt-operator.dev``); pass
    ``group`` to have it appended. Identical errors are listed once, a single one without brackets.
    """
    qualified = f"{kind}.{group}" if group else kind
    if not causes:
        return f"{qualified} {_go_quote(name)} is invalid"
    errors = list(dict.fromkeys(str(cause) for cause in causes))
    listed = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    return f"{qualified} {_go_quote(name)} is invalid: {listed}"


def invalid_status(kind: str, group: str, name: str, causes: Sequence[Cause]) -> dict[str, Any]:
    """The whole ``kind: Status`` body kube-apiserver answers a 422 Invalid with."""
    details: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    details["causes"] = [cause.as_status_cause() for cause in causes]
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message_for(kind, name, causes, group=group),
        "reason": "Invalid",
        "details": details,
        "code": 422,
    }
