"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import libvirt
import pytest


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    """libvirt's test:///default: real libvirt with an in-memory hypervisor (state shared per process)."""
    connection = libvirt.open("test:///default")
    try:
        yield connection
    finally:
        connection.close()
