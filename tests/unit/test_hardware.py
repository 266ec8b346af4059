"""The hardware comparison: what needs a redefinition, and what a running domain has yet to apply.

Checked against the XML libvirt itself returns (test:///default), which adds addresses, aliases and
generated MACs that must not count as changes.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import libvirt

from libvirt_operator.api.spec import parse_spec
from libvirt_operator.hypervisor import hardware
from libvirt_operator.hypervisor.domain_xml import Owner, build_domain_xml

DIRS = [Path("/var/lib/libvirt-operator-test/images"), Path("/var/lib/libvirt-operator-test/disks")]


def xml_for(uid: str, **spec: Any) -> str:
    body = {"nodeName": "node-a", "memory": "64Mi", "cpu": {"cores": 1},
            "interfaces": [{"name": "net0", "network": "default"}], **spec}
    owner = Owner(namespace="default", name=f"hw-{uid[:8]}", uid=uid, node="node-a")
    return build_domain_xml(owner=owner, spec=parse_spec(body), domain_type="test", disk_paths={},
                            allowed_dirs=DIRS)


def test_the_definition_libvirt_returns_does_not_differ_from_the_one_built_from_the_same_spec(
        conn: libvirt.virConnect) -> None:
    uid = str(uuid.uuid4())
    dom = conn.defineXML(xml_for(uid))
    current = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "<mac address=" in current  # libvirt generated one: the spec names none
    assert not hardware.differs(xml_for(uid), current)
    dom.undefine()


def test_a_mac_set_in_the_spec_is_a_hardware_change_and_the_same_mac_is_not(conn: libvirt.virConnect) -> None:
    uid = str(uuid.uuid4())
    dom = conn.defineXML(xml_for(uid))
    current = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    wanted = xml_for(uid, interfaces=[{"name": "net0", "network": "default", "macAddress": "52:54:00:AB:CD:EF"}])
    assert hardware.differs(wanted, current)
    dom = conn.defineXML(wanted)
    current = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "52:54:00:ab:cd:ef" in current
    assert not hardware.differs(wanted, current)
    dom.undefine()


def test_memory_cores_and_nic_order_are_changes(conn: libvirt.virConnect) -> None:
    uid = str(uuid.uuid4())
    current = conn.defineXML(xml_for(uid)).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert hardware.differs(xml_for(uid, memory="128Mi"), current)
    assert hardware.differs(xml_for(uid, cpu={"cores": 2}), current)
    two = [{"name": "a", "network": "default"}, {"name": "b", "bridge": "br0"}]
    swapped = [{"name": "b", "bridge": "br0"}, {"name": "a", "network": "default"}]
    assert hardware.differs(xml_for(uid, interfaces=swapped), xml_for(uid, interfaces=two))
    conn.lookupByUUIDString(uid).undefine()


def test_a_running_domain_redefined_with_more_memory_is_pending_a_restart_until_it_restarts(
        conn: libvirt.virConnect) -> None:
    uid = str(uuid.uuid4())
    dom = conn.defineXML(xml_for(uid))
    dom.create()
    assert not hardware.pending_restart(dom.XMLDesc(0), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    conn.defineXML(xml_for(uid, memory="128Mi"))
    assert hardware.pending_restart(dom.XMLDesc(0), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    dom.destroy()
    dom.create()
    assert not hardware.pending_restart(dom.XMLDesc(0), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    dom.destroy()
    dom.undefine()
