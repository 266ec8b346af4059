"""Quantities: the subset of Kubernetes quantities the CRD admits, as whole bytes."""

from __future__ import annotations

from typing import Any

import pytest

from libvirt_operator.api.quantity import SpecError, format_mib, parse_quantity


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512Mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("64Ki", 65536),
        ("2Ti", 2 * 2**40),
        ("1Ei", 2**60),
        ("1k", 1000),
        ("1M", 10**6),
        ("1G", 10**9),
        ("3E", 3 * 10**18),
        ("1.5Gi", 3 * 2**29),
        (".5Mi", 2**19),
        ("1.Mi", 2**20),
        ("0", 0),
        ("1024", 1024),
        ("007", 7),
        (536870912, 536870912),
        (0, 0),
    ],
)
def test_valid_quantities_are_bytes(value: str | int, expected: int) -> None:
    assert parse_quantity(value, "spec.memory") == expected


def test_fractions_of_a_byte_round_up() -> None:
    assert parse_quantity("0.1", "spec.memory") == 1
    assert parse_quantity("1.0001k", "spec.memory") == 1001


@pytest.mark.parametrize(
    "value",
    [
        "-1", "-512Mi", "+1Gi", "1e9", "1E9", "1m", "1n", "1u", "1Ki ", " 1Ki", "1Ki\n", "1KI", "1KiB", "1 Gi",
        "", ".", "Mi", "1..5Mi", "1.5.5", "0x10", "1_000", "١٢", "9" * 65,
    ],
)
def test_malformed_or_negative_strings_are_refused_naming_the_field(value: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_quantity(value, "spec.disks[2].size")
    assert info.value.field == "spec.disks[2].size"
    assert str(info.value).startswith("spec.disks[2].size: ")


@pytest.mark.parametrize("value", [-1, True, False, 1.5, None, [1], {"Mi": 1}])
def test_wrong_types_and_negative_numbers_are_refused(value: Any) -> None:
    with pytest.raises(SpecError) as info:
        parse_quantity(value, "spec.memory")
    assert info.value.field == "spec.memory"


def test_huge_values_parse_exactly_so_limits_can_refuse_them() -> None:
    assert parse_quantity("999999999Ei", "spec.memory") == 999999999 * 2**60


def test_format_mib_rounds_partial_mebibytes_up() -> None:
    assert format_mib(512 * 2**20) == "512Mi"
    assert format_mib(2**20 + 1) == "2Mi"
    assert format_mib(0) == "0Mi"
