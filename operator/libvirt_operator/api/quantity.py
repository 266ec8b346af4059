"""Kubernetes quantities (``512Mi``, ``10Gi``, ``1G``, plain byte counts) as whole bytes.

Only the non-negative, exponent-free subset the CRD schema admits is accepted, so the node parses
exactly what the API server let through (and refuses the rest when the server is older or another).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

# The CRD's pattern, kept identical: the test suite checks they agree.
QUANTITY_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[kMGTPE])?$"
_QUANTITY = re.compile(QUANTITY_PATTERN)

_SUFFIXES: dict[str, int] = {
    "": 1,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}

# Far beyond any real size; keeps a hostile 10 MB digit string from costing anything.
_MAX_TEXT = 64

MIB = 2**20


class SpecError(ValueError):
    """A spec field that cannot be accepted. ``str()`` reads ``<field>: <message>``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_quantity(value: str | int, field: str) -> int:
    """Bytes of a quantity; fractions of a byte round up (as Kubernetes does)."""
    if isinstance(value, bool):  # bool is an int subclass; `memory: true` is a mistake, not 1 byte
        raise SpecError(field, f"must be a quantity such as 512Mi or a byte count, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise SpecError(field, f"must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise SpecError(field, f"must be a quantity such as 512Mi or a byte count, not {type(value).__name__}")
    if len(value) > _MAX_TEXT:
        raise SpecError(field, f"quantity is too long ({len(value)} characters)")
    # fullmatch: "$" alone would let a trailing newline through
    match = _QUANTITY.fullmatch(value)
    if match is None:
        raise SpecError(
            field,
            f"{value!r} is not a quantity: use a non-negative number with an optional suffix "
            "Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) or k, M, G, T, P, E (powers of 1000)",
        )
    number = match.group(1)
    suffix = match.group(5) or ""
    amount = Fraction(number) * _SUFFIXES[suffix]
    return math.ceil(amount)


def format_mib(n: int) -> str:
    """A byte count as whole MiB for messages (``536870912`` -> ``512Mi``); partial MiB round up."""
    return f"{-(-n // MIB)}Mi"
