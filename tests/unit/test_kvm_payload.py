"""testbed/kvm_payload.py builds a kernel QEMU's -kernel loads as Multiboot: a 32-bit ELF whose header,
within its first 8 KiB, carries the Multiboot magic and a checksum that makes the three words sum to 0."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from testbed import kvm_payload

MAGIC = 0x1BADB002


@pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="needs binutils (as, ld)")
def test_the_payload_is_a_32_bit_multiboot_elf_that_qemu_can_read(tmp_path: Path) -> None:
    name = kvm_payload.build(tmp_path)
    data = (tmp_path / name).read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 1  # ELFCLASS32: QEMU refuses a 64-bit Multiboot ELF
    assert struct.unpack_from("<H", data, 18)[0] == 3  # EM_386
    offsets = [i for i in range(0, min(len(data), 8192) - 11, 4) if struct.unpack_from("<I", data, i)[0] == MAGIC]
    assert offsets, "no Multiboot header in the first 8 KiB"
    magic, flags, checksum = struct.unpack_from("<III", data, offsets[0])
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0
    assert (tmp_path / name).stat().st_mode & 0o044 == 0o044  # QEMU runs as another user: readable by all
