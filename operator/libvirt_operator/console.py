"""``libvirt-operator console NAMESPACE/NAME``: the serial console of a VM's guest, on the VM's node.

Interactive: libvirt's console stream through ``virsh console`` (leave with ``Ctrl+]``). ``--log``: the
console's output the node kept (libvirt's log of the serial port, rotated by virtlogd: ``console.log``,
then ``console.log.0`` ... older), oldest first. Only a domain the operator owns (its metadata) is touched.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import libvirt

from libvirt_operator.hypervisor.domain_xml import domain_name, parse_owner

ESCAPE = "Ctrl+]"
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_ROTATED = re.compile(r"\.(\d+)$")


def parse_target(text: str) -> tuple[str, str]:
    """Pure: NAMESPACE/NAME (NAME alone: namespace default) -> (namespace, name); ValueError when invalid."""
    namespace, _, name = text.rpartition("/")
    namespace = namespace or "default"
    if not (_LABEL.fullmatch(namespace) and len(namespace) <= 63):
        raise ValueError(f"{namespace!r} is not a namespace")
    if not (_SUBDOMAIN.fullmatch(name) and len(name) <= 253):
        raise ValueError(f"{name!r} is not a VirtualMachine name")
    return namespace, name


def console_log_of(xml: str) -> Path | None:
    """Pure: the file libvirt logs the domain's first serial port to (None: it logs none)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    log = root.find("./devices/serial/log")
    path = log.get("file") if log is not None else None
    return Path(path) if path else None


def log_files(log: Path, names: Sequence[str]) -> list[Path]:
    """Pure: the log and virtlogd's rotated copies among ``names`` (the directory's), oldest first."""
    rotated = []
    for name in names:
        if name.startswith(log.name + "."):
            match = _ROTATED.search(name[len(log.name):])
            if match and name == f"{log.name}.{match.group(1)}":
                rotated.append((int(match.group(1)), log.parent / name))
    ordered = [path for _n, path in sorted(rotated, reverse=True)]
    return ordered + ([log] if log.name in names else [])


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="libvirt-operator console",
                                     description=f"Attach to a VM's serial console on this node (leave with "
                                                 f"{ESCAPE}), or print the console's kept log (--log).")
    parser.add_argument("vm", metavar="NAMESPACE/NAME", help="the VirtualMachine (NAME alone: namespace default)")
    parser.add_argument("--log", action="store_true", help="print the console's log kept on the node and exit")
    parser.add_argument("--libvirt-uri", default=os.environ.get("LIBVIRT_OPERATOR_LIBVIRT_URI", "qemu:///system"),
                        help="libvirt connection URI (default: qemu:///system) [env LIBVIRT_OPERATOR_LIBVIRT_URI]")
    args = parser.parse_args(argv)
    try:
        namespace, name = parse_target(args.vm)
    except ValueError as exc:
        parser.error(str(exc))
    domain = domain_name(namespace, name)
    try:
        conn = libvirt.open(args.libvirt_uri)
        try:
            xml = conn.lookupByName(domain).XMLDesc(0)
        finally:
            conn.close()
    except libvirt.libvirtError as exc:
        print(f"libvirt-operator console: no domain {domain} at {args.libvirt_uri} (is this the VM's node?): "
              f"{exc.get_error_message()}", file=sys.stderr)
        return 1
    owner = parse_owner(xml)
    if owner is None or (owner.namespace, owner.name) != (namespace, name):
        print(f"libvirt-operator console: domain {domain} is not a VirtualMachine's: left alone", file=sys.stderr)
        return 1
    if args.log:
        log = console_log_of(xml)
        if log is None:
            print(f"libvirt-operator console: {domain} keeps no console log", file=sys.stderr)
            return 1
        try:
            names = os.listdir(log.parent)
        except OSError as exc:
            print(f"libvirt-operator console: cannot read {log.parent}: {exc.strerror}", file=sys.stderr)
            return 1
        out = sys.stdout.buffer
        for path in log_files(log, names):
            with open(path, "rb") as handle:
                while chunk := handle.read(65536):
                    out.write(chunk)
        out.flush()
        return 0
    print(f"Connected to the console of {namespace}/{name} ({domain}); leave with {ESCAPE}", file=sys.stderr)
    os.execvp("virsh", ["virsh", "-c", args.libvirt_uri, "console", domain])
