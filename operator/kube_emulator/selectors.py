"""Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`exists, `>`, `<`) and field selectors.

Parsing follows k8s.io/apimachinery/pkg/labels and pkg/fields; a malformed selector is a 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kube_emulator import errors

JSON = dict[str, Any]
Predicate = Callable[[JSON], bool]

_KEY = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^()]*)\)\s*$")
_OP_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=|>|<)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # =, !=, in, notin, exists, !exists, >, <
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present:
            return False
        try:
            number, bound = int(str(value)), int(self.values[0])
        except ValueError:
            return False
        return number > bound if self.op == ">" else number < bound


def _split_outside_parens(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def parse_labels(selector: str) -> list[Requirement]:
    requirements: list[Requirement] = []
    if not selector.strip():
        return requirements
    for part in _split_outside_parens(selector):
        if match := _SET_RE.match(part):
            values = tuple(v.strip() for v in match.group(3).split(","))
            if any(not re.fullmatch(_VALUE, v) for v in values):
                raise errors.bad_request(f"unable to parse requirement: invalid label value in {part.strip()!r}")
            requirements.append(Requirement(match.group(1), match.group(2), values))
        elif match := _OP_RE.match(part):
            op = "=" if match.group(2) == "==" else match.group(2)
            if op in (">", "<") and not re.fullmatch(r"-?\d+", match.group(3)):
                raise errors.bad_request(f'unable to parse requirement: values[0]: Invalid value: "{match.group(3)}": '
                                         "for 'Gt', 'Lt' operators, the value must be an integer")
            requirements.append(Requirement(match.group(1), op, (match.group(3),)))
        elif match := _EXISTS_RE.match(part):
            requirements.append(Requirement(match.group(2), "!exists" if match.group(1) else "exists"))
        else:
            raise errors.bad_request(f"unable to parse requirement: found '{part.strip()}', expected: "
                                     "a label selector requirement")
    return requirements


def label_predicate(selector: str | None) -> Predicate | None:
    if not selector:
        return None
    requirements = parse_labels(selector)

    def matches(obj: JSON) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(r.matches(labels) for r in requirements)

    return matches


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    value: str
    equal: bool


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_fields(selector: str) -> list[FieldRequirement]:
    found: list[FieldRequirement] = []
    if not selector.strip():
        return found
    for part in re.split(r"(?<!\\),", selector):
        match = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)(.*)$", part, re.DOTALL)
        if not match:
            raise errors.bad_request(f"invalid selector: '{selector}'; can't understand '{part}'")
        found.append(FieldRequirement(match.group(1), _unescape(match.group(3).strip()), match.group(2) != "!="))
    return found


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """A field's value as field selectors compare it: missing is "", scalars as Go prints them."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return ""
        node = node[part]
    if isinstance(node, bool):
        return "true" if node else "false"
    if node is None or isinstance(node, Mapping | list):
        return ""
    return str(node)


def field_predicate(selector: str | None, supported: Iterable[str],
                    rename: Callable[[str], str] = lambda p: p) -> Predicate | None:
    """A predicate over stored objects; `rename` maps a field of the request version to storage."""
    if not selector:
        return None
    allowed = set(supported)
    requirements = parse_fields(selector)
    for req in requirements:
        if req.path not in allowed:
            raise errors.bad_request(f'field label not supported: {req.path}')
    resolved = [(rename(r.path), r) for r in requirements]

    def matches(obj: JSON) -> bool:
        return all((field_value(obj, path) == r.value) == r.equal for path, r in resolved)

    return matches


def combine(*predicates: Predicate | None) -> Predicate | None:
    active = [p for p in predicates if p is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]
    return lambda obj: all(p(obj) for p in active)
