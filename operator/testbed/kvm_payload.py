"""A guest kernel of thirty instructions that a nested kvm_pvm /dev/kvm cannot run: QEMU stops it on a KVM internal
error within seconds, where a Debian kernel spun for three minutes (alone; fifteen beside the other suites)
before reaching the same instruction in its slab allocator.

kvm_pvm emulates a guest that is not PVM-aware instruction by instruction, and KVM's instruction emulator
has no ``cmpxchg16b``: "KVM internal error. Suberror: 1 (emulation failure)". Under TCG the same kernel
runs it and halts. Built with binutils (gcc's dependency, which hack/setup.sh installs) as a 32-bit
Multiboot ELF, which QEMU's -kernel (the spec's boot.kernel) loads without a boot loader.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

NAME = "cmpxchg16b.elf"

# Multiboot v1 enters in 32-bit protected mode, paging off: identity-map the first 2 MiB (the kernel sits at
# 1 MiB), enable PAE and EFER.LME, turn on paging, far-jump to a 64-bit code segment, then the instruction.
SOURCE = r"""
        .code32
        .text
        .globl _start
        .align 4
        .long 0x1BADB002, 0, -0x1BADB002
_start:
        cli
        movl $pdpt + 3, pml4
        movl $pd + 3, pdpt
        movl $0x83, pd
        movl $pml4, %eax
        movl %eax, %cr3
        movl %cr4, %eax
        orl $0x20, %eax
        movl %eax, %cr4
        movl $0xC0000080, %ecx
        rdmsr
        orl $0x100, %eax
        wrmsr
        movl %cr0, %eax
        orl $0x80000001, %eax
        movl %eax, %cr0
        lgdt gdtr
        ljmp $0x08, $long_mode
        .code64
long_mode:
        xorl %eax, %eax
        xorl %edx, %edx
        xorl %ebx, %ebx
        xorl %ecx, %ecx
        movl $target, %edi
        lock cmpxchg16b (%rdi)
1:      hlt
        jmp 1b
        .data
        .align 16
target: .quad 0, 0
gdt:    .quad 0, 0x00209A0000000000
gdtr:   .word 15
        .long gdt
        .align 4096
pml4:   .fill 512, 8, 0
pdpt:   .fill 512, 8, 0
pd:     .fill 512, 8, 0
"""


def build(directory: Path) -> str:
    """Assemble and link the kernel into ``directory`` (readable by QEMU's user); returns its file name."""
    with tempfile.TemporaryDirectory(prefix="lvo-payload-") as work:
        obj = Path(work) / "payload.o"
        out = directory / NAME
        for cmd in (["as", "--32", "-o", str(obj), "-"],
                    ["ld", "-m", "elf_i386", "-N", "--no-warn-rwx-segments", "-Ttext=0x100000", "-o", str(out),
                     str(obj)]):
            done = subprocess.run(cmd, input=SOURCE if cmd[0] == "as" else None, capture_output=True, text=True,
                                  timeout=60)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    os.chmod(out, 0o644)
    return NAME
