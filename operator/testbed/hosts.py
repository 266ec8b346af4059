"""libvirt as a test sees it: assertions and out-of-band actions (`virsh destroy`, an admin's own guest)."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
from pathlib import Path

import libvirt

from libvirt_operator.hypervisor.domain_xml import parse_owner
from testbed.polling import wait_for

QEMU_URI = "qemu:///system"


def libvirtd_answers(uri: str = QEMU_URI) -> bool:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


def live_libvirtd_pids() -> list[int]:
    """The system libvirtd's processes that still run (a stopped one lingers as a zombie until reaped); not
    the libvirtds of hypervisor hosts in namespaces of their own (testbed.hypervisors), which tests running
    meanwhile may have started."""
    pids = []
    ours = os.readlink("/proc/self/ns/pid")
    for pid in subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True).stdout.split():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            namespace = os.readlink(f"/proc/{pid}/ns/pid")
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and namespace == ours:
            pids.append(int(pid))
    return pids


def ensure_libvirtd(timeout: float = 120.0) -> None:
    """The system libvirtd answers again: started once the stopped one has exited (a SIGTERMed libvirtd
    takes a while with guests running; a second one started meanwhile fails on its pid file and exits)."""
    def up() -> bool:
        if libvirtd_answers():
            return True
        if not live_libvirtd_pids():
            subprocess.run(["libvirtd", "-d"], capture_output=True, timeout=60)
        return False
    wait_for(up, timeout=timeout, interval=0.2, what="libvirtd to answer again")


class Host:
    """libvirt as the test sees it (assertions and out-of-band actions like `virsh destroy`)."""

    def __init__(self, uri: str = QEMU_URI) -> None:
        self.uri = uri
        self.conn = libvirt.open(uri)

    def domain(self, uuid_: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByUUIDString(uuid_)
        except libvirt.libvirtError:
            return None

    def state(self, uuid_: str) -> int | None:
        dom = self.domain(uuid_)
        if dom is None:
            return None
        try:
            return int(dom.state()[0])
        except libvirt.libvirtError:
            return None

    def reconnect(self) -> None:
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass
        self.conn = libvirt.open(self.uri)

    def virsh(self, *args: str) -> str:
        out = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)}: {out.stderr}")
        return out.stdout

    def qemu_pid(self, name: str) -> int:
        pidfile = Path(f"/run/libvirt/qemu/{name}.pid")
        return int(pidfile.read_text().strip())

    def owned_domains(self, node_prefix: str) -> list[tuple[str, str]]:
        result = []
        for dom in self.conn.listAllDomains(0):
            try:
                owner = parse_owner(dom.XMLDesc(0))
            except libvirt.libvirtError:
                continue
            if owner is not None and owner.node.startswith(node_prefix):
                result.append((dom.UUIDString(), dom.name()))
        return result

    def remove(self, uuid_: str) -> None:
        dom = self.domain(uuid_)
        if dom is None:
            return
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass
        try:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError:
            pass

    def define_unmanaged(self, name: str, memory_mib: int = 32) -> str:
        """A domain this operator does not own (no metadata), like an admin's own guest."""
        caps = self.conn.getCapabilities()
        dtype = "kvm" if "type='kvm'" in caps and os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
        xml = (f"<domain type='{dtype}'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory>"
               "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices><serial type='pty'/></devices>"
               "</domain>")
        dom = self.conn.defineXML(xml)
        return str(dom.UUIDString())

    def close(self) -> None:
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass


def remove_test_domains(conn: libvirt.virConnect, keep: frozenset[str] = frozenset({"test"})) -> None:
    """Blocking: undefine every domain on libvirt's test:///default but its own `test` domain."""
    for dom in conn.listAllDomains(0):
        if dom.name() in keep:
            continue
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def remove_owned(host: Host, node_prefix: str) -> int:
    """The domains of nodes named ``node_prefix``..., removed eight at a time (a destroy waits for its QEMU
    to exit: dozens of them one by one took 94 s at the end of a full run). Returns how many."""
    owned = [uuid_ for uuid_, _name in host.owned_domains(node_prefix)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(host.remove, owned))
    return len(owned)


def remove_owned_now(node_prefix: str) -> int:
    """``remove_owned`` on a connection of its own, opened and closed here (for a thread beside the tests, or a
    process of its own); 0 when libvirtd does not answer, or stops answering meanwhile."""
    try:
        host = Host()
    except libvirt.libvirtError:
        return 0
    try:
        return remove_owned(host, node_prefix)
    except libvirt.libvirtError:
        return 0
    finally:
        host.close()
