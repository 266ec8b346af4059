"""The Kubernetes JSONPath subset used by CRD printer columns and ``kubectl -o jsonpath``.

Supported, as in client-go's ``util/jsonpath``: an optional surrounding ``{...}`` and leading
``$``/``@``; fields ``.a.b`` (with ``\\.`` escaping a dot inside a name) and ``['a.b']``;
wildcards ``.*`` and ``[*]``; indices ``[0]``, ``[-1]``, unions ``[0,2]`` / ``['a','b']`` and slices
``[1:3]``, ``[::2]``; recursive descent ``..name``; filters ``[?(@.type=="Ready")]`` with
``== != < <= > >=`` against a literal or another ``@`` path, and the existence test
``[?(@.x)]``.

Missing keys and out-of-range indices give no match rather than an error (printer columns use
``AllowMissingKeys``). Comparing values of different types in a filter does not match (``!=``
does); client-go reports an error there. Templates with text or several ``{}`` blocks, and
``range``/``end``, are not supported.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

__all__ = ["JSONPathError", "compile_path", "evaluate", "format_results", "format_text"]

Step = Callable[[Any], Iterable[Any]]


class JSONPathError(ValueError):
    """The expression is not valid Kubernetes JSONPath."""


def evaluate(expr: str, obj: Any) -> list[Any]:
    """All values ``expr`` selects in ``obj``, in document order (empty when nothing matches)."""
    return compile_path(expr)(obj)


@functools.lru_cache(maxsize=512)
def compile_path(expr: str) -> Callable[[Any], list[Any]]:
    """A reusable evaluator for ``expr``; raises ``JSONPathError`` if ``expr`` is invalid."""
    steps = tuple(_Parser(expr).parse_expression())

    def run(obj: Any) -> list[Any]:
        current = [obj]
        for step in steps:
            current = [found for node in current for found in step(node)]
        return current

    return run


# --- steps -------------------------------------------------------------------------------------------


def _field(name: str) -> Step:
    def step(node: Any) -> Iterable[Any]:
        if isinstance(node, Mapping) and name in node:
            return (node[name],)
        return ()

    return step


def _wildcard(node: Any) -> Iterable[Any]:
    if isinstance(node, Mapping):
        return list(node.values())
    if isinstance(node, (list, tuple)):
        return list(node)
    return ()


def _descendants(node: Any) -> Iterator[Any]:
    yield node
    children: Iterable[Any] = ()
    if isinstance(node, Mapping):
        children = node.values()
    elif isinstance(node, (list, tuple)):
        children = node
    for child in children:
        yield from _descendants(child)


def _indices(indices: Sequence[int]) -> Step:
    def step(node: Any) -> Iterable[Any]:
        if not isinstance(node, (list, tuple)):
            return ()
        found = []
        for index in indices:
            position = index + len(node) if index < 0 else index
            if 0 <= position < len(node):
                found.append(node[position])
        return found

    return step


def _slice(start: int | None, stop: int | None, stride: int | None) -> Step:
    def step(node: Any) -> Iterable[Any]:
        if not isinstance(node, (list, tuple)):
            return ()
        return list(node[start:stop:stride])

    return step


@dataclass(frozen=True)
class _Operand:
    path: Callable[[Any], list[Any]] | None = None
    literal: Any = None

    def values(self, node: Any) -> list[Any]:
        return self.path(node) if self.path is not None else [self.literal]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compare(operator: str, left: Any, right: Any) -> bool:
    comparable = (_is_number(left) and _is_number(right)) or (
        type(left) is type(right) and (isinstance(left, str) or operator in ("==", "!="))
    )
    if not comparable:
        return operator == "!="
    if operator == "==":
        return bool(left == right)
    if operator == "!=":
        return bool(left != right)
    if operator == "<":
        return bool(left < right)
    if operator == "<=":
        return bool(left <= right)
    if operator == ">":
        return bool(left > right)
    return bool(left >= right)


def _filter(left: _Operand, operator: str | None, right: _Operand | None) -> Step:
    def keep(item: Any) -> bool:
        lefts = left.values(item)
        if operator is None or right is None:
            return bool(lefts)
        rights = right.values(item)
        if not lefts or not rights:
            return False
        return _compare(operator, lefts[0], rights[0])

    def step(node: Any) -> Iterable[Any]:
        if not isinstance(node, (list, tuple)):
            return ()
        return [item for item in node if keep(item)]

    return step


# --- parser ------------------------------------------------------------------------------------------

# Characters that end a bare field name (a backslash escapes any of them).
_NAME_STOP: Final = frozenset(".[]{}()'\",=!<>@$?*& \t\n|")
_OPERATORS: Final = ("==", "!=", "<=", ">=", "<", ">")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text.strip()
        if self.text.startswith("{"):
            if not self.text.endswith("}"):
                raise JSONPathError(f"unclosed action in {text!r}")
            self.text = self.text[1:-1].strip()
        self.pos = 0

    def error(self, what: str) -> JSONPathError:
        return JSONPathError(f"{what} at position {self.pos} of {self.text!r}")

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def parse_expression(self) -> list[Step]:
        if not self.text:
            raise JSONPathError("empty JSONPath expression")
        steps: list[Step] = []
        if self.peek() in ("$", "@"):
            self.pos += 1
        elif self.peek() not in (".", "["):
            steps.append(_field(self.parse_name()))  # lenient: "metadata.name"
        steps += self.parse_steps(stop="")
        if not self.at_end():
            raise self.error(f"unexpected {self.peek()!r}")
        return steps

    def parse_steps(self, stop: str) -> list[Step]:
        """Steps until the end of text or a character in ``stop`` (or an operator/space)."""
        steps: list[Step] = []
        while not self.at_end() and self.peek() not in stop:
            char = self.peek()
            if char == "." and self.peek(1) == ".":
                self.pos += 2
                steps.append(_descendants)
                if self.peek() == "[":
                    steps.append(self.parse_bracket())
                else:
                    steps.append(self.parse_dot_selector())
            elif char == ".":
                self.pos += 1
                steps.append(self.parse_dot_selector())
            elif char == "[":
                steps.append(self.parse_bracket())
            else:
                break
        return steps

    def parse_dot_selector(self) -> Step:
        if self.peek() == "*":
            self.pos += 1
            return _wildcard
        return _field(self.parse_name())

    def parse_name(self) -> str:
        chars: list[str] = []
        while not self.at_end():
            char = self.peek()
            if char == "\\" and self.pos + 1 < len(self.text):
                chars.append(self.peek(1))
                self.pos += 2
                continue
            if char in _NAME_STOP:
                break
            chars.append(char)
            self.pos += 1
        if not chars:
            raise self.error("expected a field name")
        return "".join(chars)

    def skip_spaces(self) -> None:
        while self.peek() in (" ", "\t", "\n") and not self.at_end():
            self.pos += 1

    def expect(self, char: str) -> None:
        self.skip_spaces()
        if self.peek() != char:
            raise self.error(f"expected {char!r}")
        self.pos += 1

    def parse_bracket(self) -> Step:
        self.pos += 1  # '['
        self.skip_spaces()
        char = self.peek()
        if char == "?":
            self.pos += 1
            step = self.parse_filter()
        elif char == "*":
            self.pos += 1
            step = _wildcard
        elif char in ("'", '"'):
            names = [self.parse_string()]
            self.skip_spaces()
            while self.peek() == ",":
                self.pos += 1
                self.skip_spaces()
                names.append(self.parse_string())
                self.skip_spaces()
            step = _field(names[0]) if len(names) == 1 else _fields(names)
        else:
            step = self.parse_index_or_slice()
        self.expect("]")
        return step

    def parse_string(self) -> str:
        quote = self.peek()
        if quote not in ("'", '"'):
            raise self.error("expected a quoted string")
        self.pos += 1
        chars: list[str] = []
        while not self.at_end() and self.peek() != quote:
            if self.peek() == "\\" and self.pos + 1 < len(self.text):
                self.pos += 1
                escaped = self.peek()
                chars.append({"n": "\n", "t": "\t", "r": "\r"}.get(escaped, escaped))
            else:
                chars.append(self.peek())
            self.pos += 1
        if self.at_end():
            raise self.error("unterminated string")
        self.pos += 1
        return "".join(chars)

    def parse_index_or_slice(self) -> Step:
        end = self.text.find("]", self.pos)
        if end < 0:
            raise self.error("unclosed '['")
        body = self.text[self.pos : end].replace(" ", "")
        self.pos = end
        if not body:
            raise self.error("empty '[]'")
        try:
            if ":" in body:
                parts = body.split(":")
                if len(parts) > 3:
                    raise ValueError(body)
                start, stop, stride = (int(p) if p else None for p in [*parts, "", ""][:3])
                if stride == 0:
                    raise JSONPathError(f"slice step cannot be zero in {self.text!r}")
                return _slice(start, stop, stride)
            return _indices([int(p) for p in body.split(",")])
        except ValueError as err:
            if isinstance(err, JSONPathError):
                raise
            raise JSONPathError(f"invalid array index {body!r} in {self.text!r}") from None

    def parse_filter(self) -> Step:
        self.expect("(")
        self.skip_spaces()
        left = self.parse_operand()
        self.skip_spaces()
        operator = next((op for op in _OPERATORS if self.text.startswith(op, self.pos)), None)
        right = None
        if operator is not None:
            self.pos += len(operator)
            self.skip_spaces()
            right = self.parse_operand()
            self.skip_spaces()
        self.expect(")")
        return _filter(left, operator, right)

    def parse_operand(self) -> _Operand:
        char = self.peek()
        if char == "@":
            self.pos += 1
            steps = tuple(self.parse_steps(stop=" \t\n)=!<>"))

            def run(node: Any) -> list[Any]:
                current = [node]
                for step in steps:
                    current = [found for item in current for found in step(item)]
                return current

            return _Operand(path=run)
        if char in ("'", '"'):
            return _Operand(literal=self.parse_string())
        start = self.pos
        while not self.at_end() and self.peek() not in " \t\n)=!<>":
            self.pos += 1
        word = self.text[start : self.pos]
        if word in ("true", "false"):
            return _Operand(literal=word == "true")
        if word == "null":
            return _Operand(literal=None)
        try:
            return _Operand(literal=int(word))
        except ValueError:
            pass
        try:
            return _Operand(literal=float(word))
        except ValueError:
            raise JSONPathError(f"unrecognized filter operand {word!r} in {self.text!r}") from None


def _fields(names: Sequence[str]) -> Step:
    def step(node: Any) -> Iterable[Any]:
        if not isinstance(node, Mapping):
            return ()
        return [node[name] for name in names if name in node]

    return step


# --- printing, as kubectl -o jsonpath prints results --------------------------------------------------


def _go_float(value: float, *, json: bool = False) -> str:
    """Go's %v of a float64, or encoding/json's rendering of it when ``json`` is set."""
    if math.isnan(value) or math.isinf(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if value == 0:
        return "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent
    exp10 = point - 1
    prefix = "-" if sign else ""
    use_exponent = (abs(value) < 1e-6 or abs(value) >= 1e21) if json else (exp10 < -4 or exp10 >= 6)
    if use_exponent:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        width = 1 if json else 2  # encoding/json trims e-07 to e-7
        return f"{prefix}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):0{width}d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return f"{prefix}{digits[:point]}.{digits[point:]}"


_JSON_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _json_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[char])
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _go_json(value: Any) -> str:
    """Compact JSON as Go's encoding/json writes it (sorted keys, HTML-safe, Go floats)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value, json=True)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_json_string(str(k))}:{_go_json(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_go_json(item) for item in value) + "]"
    return _json_string(str(value))


def format_text(value: Any) -> str:
    """One result as ``kubectl -o jsonpath`` prints it: objects and arrays as compact JSON,
    strings raw, numbers and booleans as Go prints them, null as ``null``."""
    if isinstance(value, (Mapping, list, tuple)):
        return _go_json(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    return str(value)


def format_results(values: Sequence[Any]) -> str:
    """All results of one expression, space-separated, as ``kubectl -o jsonpath`` prints them."""
    return " ".join(format_text(value) for value in values)
