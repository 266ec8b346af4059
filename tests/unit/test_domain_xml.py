"""Domain XML: what the builder writes, what libvirt (test:///default) accepts, and ownership read-back."""

from __future__ import annotations

import dataclasses
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from libvirt_operator.api.constants import XML_NAMESPACE, XML_PREFIX
from libvirt_operator.api.spec import DiskSpec, InterfaceSpec, SpecError, VMSpec, parse_spec
from libvirt_operator.hypervisor.domain_xml import (
    QEMU_NAMESPACE,
    Owner,
    build_domain_xml,
    domain_name,
    owned_disk_paths,
    parse_owner,
)

NS = f"{{{XML_NAMESPACE}}}"
QEMU = f"{{{QEMU_NAMESPACE}}}"
STORAGE = Path("/var/lib/libvirt-operator-test/disks")
IMAGES = Path("/var/lib/libvirt-operator-test/images")

# Every element the builder may write (by path from the root) and the attributes each may carry.
ALLOWED: dict[str, frozenset[str]] = {
    path: frozenset(attrs)
    for path, attrs in {
        "domain": {"type"},
        "domain/name": set(),
        "domain/uuid": set(),
        "domain/metadata": set(),
        f"domain/metadata/{NS}instance": set(),
        f"domain/metadata/{NS}instance/{NS}owner": {"namespace", "name", "uid", "node"},
        f"domain/metadata/{NS}instance/{NS}disks": set(),
        f"domain/metadata/{NS}instance/{NS}disks/{NS}disk": {"name", "path"},
        "domain/memory": {"unit"},
        "domain/currentMemory": {"unit"},
        "domain/vcpu": {"placement"},
        "domain/os": {"firmware"},
        "domain/os/type": {"arch", "machine"},
        "domain/os/boot": {"dev"},
        "domain/os/kernel": set(),
        "domain/os/initrd": set(),
        "domain/os/cmdline": set(),
        "domain/features": set(),
        "domain/features/acpi": set(),
        "domain/features/apic": set(),
        "domain/clock": {"offset"},
        "domain/on_poweroff": set(),
        "domain/on_reboot": set(),
        "domain/on_crash": set(),
        "domain/devices": set(),
        "domain/devices/emulator": set(),
        "domain/devices/disk": {"type", "device"},
        "domain/devices/disk/driver": {"name", "type"},
        "domain/devices/disk/source": {"file"},
        "domain/devices/disk/target": {"dev", "bus"},
        "domain/devices/disk/readonly": set(),
        "domain/devices/controller": {"type", "index", "model"},
        "domain/devices/interface": {"type"},
        "domain/devices/interface/source": {"network", "bridge"},
        "domain/devices/interface/mac": {"address"},
        "domain/devices/interface/model": {"type"},
        "domain/devices/serial": {"type"},
        "domain/devices/serial/target": {"port"},
        "domain/devices/serial/log": {"file", "append"},
        "domain/devices/channel": {"type"},
        "domain/devices/channel/target": {"type", "name"},
        "domain/devices/console": {"type"},
        "domain/devices/console/target": {"type", "port"},
        "domain/devices/panic": {"model"},
        f"domain/{QEMU}commandline": set(),
        f"domain/{QEMU}commandline/{QEMU}arg": {"value"},
    }.items()
}
# Elements whose text the builder sets; every other element holds only whitespace.
WITH_TEXT = {"domain/name", "domain/uuid", "domain/memory", "domain/currentMemory", "domain/vcpu",
             "domain/os/type", "domain/on_poweroff", "domain/on_reboot", "domain/on_crash",
             "domain/devices/emulator", "domain/os/kernel", "domain/os/initrd", "domain/os/cmdline"}


def assert_only_intended(xml: str, owner: Owner, spec: VMSpec, allowed_dirs: list[Path]) -> None:
    """The XML has no element or attribute outside ALLOWED, and every user value sits where intended."""
    root = ET.fromstring(xml)

    def walk(element: ET.Element, path: str) -> Iterator[tuple[str, ET.Element]]:
        yield path, element
        for child in element:
            yield from walk(child, f"{path}/{child.tag}")

    for path, element in walk(root, root.tag):
        assert path in ALLOWED, f"unexpected element {path}"
        extra = set(element.attrib) - ALLOWED[path]
        assert not extra, f"unexpected attributes {extra} on {path}"
        if path not in WITH_TEXT:
            assert not (element.text or "").strip(), f"unexpected text in {path}"
        assert not (element.tail or "").strip(), f"unexpected text after {path}"

    assert root.findtext("name") == domain_name(owner.namespace, owner.name)
    assert root.findtext("uuid") == owner.uid.lower()
    owner_el = root.find(f"metadata/{NS}instance/{NS}owner")
    assert owner_el is not None
    assert dict(owner_el.attrib) == {"namespace": owner.namespace, "name": owner.name,
                                     "uid": owner.uid.lower(), "node": owner.node}
    disks = root.findall("devices/disk[@device='disk']")
    assert [d.get("type") for d in disks] == ["file"] * len(spec.disks)
    for element in disks:
        source = Path(element.find("source").get("file", ""))  # type: ignore[union-attr]
        assert any(source.is_relative_to(d) for d in allowed_dirs)
    nics = root.findall("devices/interface")
    libvirt_nics = [nic for nic in spec.interfaces if not nic.user]
    assert len(nics) == len(libvirt_nics)
    for nic, element in zip(libvirt_nics, nics, strict=True):
        source_el = element.find("source")
        assert source_el is not None
        if nic.network is not None:
            assert (element.get("type"), dict(source_el.attrib)) == ("network", {"network": nic.network})
        else:
            assert (element.get("type"), dict(source_el.attrib)) == ("bridge", {"bridge": nic.bridge})
        model_el = element.find("model")
        assert model_el is not None and model_el.get("type") == nic.model
        mac_el = element.find("mac")
        assert (None if mac_el is None else mac_el.get("address")) == nic.mac_address


def make_owner(**changes: str) -> Owner:
    values = {"namespace": "default", "name": "vm-1", "uid": str(uuid.uuid4()), "node": "worker-1"}
    values.update(changes)
    return Owner(**values)


def paths_for(owner: Owner, spec: VMSpec) -> dict[str, Path]:
    return {d.name: STORAGE / owner.uid / f"{d.name}.qcow2" for d in spec.disks}


def build(owner: Owner, spec: VMSpec, **kwargs: Any) -> str:
    options: dict[str, Any] = {"domain_type": "test", "disk_paths": paths_for(owner, spec),
                               "allowed_dirs": [STORAGE, IMAGES]}
    options.update(kwargs)
    return build_domain_xml(owner=owner, spec=spec, **options)


def define_and_undefine(conn: libvirt.virConnect, xml: str) -> str:
    """Define on libvirt, return libvirt's own rendering of the domain, and undefine it again."""
    dom = conn.defineXML(xml)
    try:
        return str(dom.XMLDesc(0))
    finally:
        dom.undefine()


FULL_SPEC = parse_spec({
    "nodeName": "worker-1",
    "cpu": {"cores": 2},
    "memory": "100000Ki",
    "disks": [
        {"name": "root", "image": "base.qcow2", "size": "2Gi"},
        {"name": "data", "size": "1Gi", "bus": "scsi"},
        {"name": "extra", "size": "1Gi", "bus": "sata"},
        {"name": "more", "size": "1Gi", "bus": "virtio"},
    ],
    "interfaces": [
        {"name": "nic0", "network": "default", "macAddress": "52:54:00:12:34:56"},
        {"name": "nic1", "bridge": "br0", "model": "e1000"},
    ],
})


def test_domain_name_joins_namespace_and_name_with_an_underscore() -> None:
    assert domain_name("team-a", "web.1") == "team-a_web.1"


def test_full_spec_becomes_the_intended_domain(conn: libvirt.virConnect) -> None:
    owner = make_owner()
    xml = build(owner, FULL_SPEC, emulator="/usr/bin/qemu-system-x86_64", machine="pc")
    assert_only_intended(xml, owner, FULL_SPEC, [STORAGE])
    root = ET.fromstring(xml)
    assert root.get("type") == "test"
    assert root.findtext("memory") == "100000" and root.find("memory").get("unit") == "KiB"  # type: ignore[union-attr]
    assert root.findtext("vcpu") == "2"
    assert [(t.get("dev"), t.get("bus")) for t in root.findall("devices/disk/target")] == [
        ("vda", "virtio"), ("sda", "scsi"), ("sdb", "sata"), ("vdb", "virtio")]
    assert [c.get("model") for c in root.findall("devices/controller")] == ["virtio-scsi"]
    assert [d.get("type") for d in root.findall("devices/disk/driver")] == ["qcow2"] * 4
    assert root.findtext("on_crash") == "destroy" and root.findtext("on_reboot") == "restart"
    assert root.find("devices/serial") is not None and root.find("devices/console") is not None
    assert root.find("devices/graphics") is None
    libvirt_xml = define_and_undefine(conn, xml)
    # libvirt keeps our metadata under our prefix and namespace.
    assert f"<{XML_PREFIX}:instance xmlns:{XML_PREFIX}=\"{XML_NAMESPACE}\">" in libvirt_xml
    assert parse_owner(libvirt_xml) == owner
    assert owned_disk_paths(libvirt_xml) == [STORAGE / owner.uid / f"{n}.qcow2"
                                             for n in ("root", "data", "extra", "more")]


def test_vm_without_disks_or_interfaces_is_valid(conn: libvirt.virConnect) -> None:
    owner = make_owner()
    spec = parse_spec({"nodeName": "worker-1", "memory": "32Mi"})
    xml = build(owner, spec)
    assert ET.fromstring(xml).find("devices/controller") is None
    libvirt_xml = define_and_undefine(conn, xml)
    assert parse_owner(libvirt_xml) == owner
    assert owned_disk_paths(libvirt_xml) == []


def test_memory_is_rounded_up_to_whole_kib() -> None:
    spec = parse_spec({"nodeName": "n", "memory": 16 * 2**20 + 1})
    assert ET.fromstring(build(make_owner(), spec)).findtext("memory") == str(16 * 1024 + 1)


def test_domain_uuid_is_the_owners_uid() -> None:
    owner = make_owner(uid="6F9619FF-8B86-D011-B42D-00C04FC964FF")
    root = ET.fromstring(build(owner, FULL_SPEC))
    assert root.findtext("uuid") == "6f9619ff-8b86-d011-b42d-00c04fc964ff"


def test_disk_outside_the_allowed_directories_is_refused() -> None:
    owner = make_owner()
    for bad in (Path("/dev/sda"), Path("/etc/shadow"), STORAGE / ".." / "escape.qcow2", STORAGE):
        paths = {**paths_for(owner, FULL_SPEC), "data": bad}
        with pytest.raises(ValueError, match="outside the allowed directories"):
            build(owner, FULL_SPEC, disk_paths=paths)


def test_disk_path_through_a_symlink_leading_outside_is_refused(tmp_path: Path) -> None:
    storage = tmp_path / "disks"
    storage.mkdir()
    (storage / "uid").symlink_to("/dev")
    owner = make_owner()
    paths = {**paths_for(owner, FULL_SPEC)}
    paths["data"] = storage / "uid" / "sda"
    with pytest.raises(ValueError, match="outside"):
        build(owner, FULL_SPEC, disk_paths=paths, allowed_dirs=[storage, STORAGE])


def test_disk_paths_are_written_resolved(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    owner = make_owner()
    spec = parse_spec({"nodeName": "n", "memory": "32Mi", "disks": [{"name": "a", "size": "1Mi"}]})
    xml = build(owner, spec, disk_paths={"a": tmp_path / "link" / "a.qcow2"}, allowed_dirs=[tmp_path / "link"])
    assert ET.fromstring(xml).find("devices/disk/source").get("file") == str(real / "a.qcow2")  # type: ignore[union-attr]


def test_a_disk_without_a_file_is_refused() -> None:
    owner = make_owner()
    paths = paths_for(owner, FULL_SPEC)
    del paths["root"]
    with pytest.raises(ValueError, match="no disk file"):
        build(owner, FULL_SPEC, disk_paths=paths)


@pytest.mark.parametrize(
    "changes",
    [
        {"namespace": "Default"}, {"namespace": "a_b"}, {"namespace": "a.b"}, {"namespace": "x" * 64},
        {"name": "a/b"}, {"name": "a'b"}, {"name": "<x>"}, {"name": ""}, {"name": "a\x00"},
        {"name": "a" * 240}, {"node": "Node 1"}, {"node": "a&b"},
        {"uid": "not-a-uuid"}, {"uid": "1234"}, {"uid": "{12345678-1234-1234-1234-123456789abc}"},
    ],
)
def test_owner_values_that_kubernetes_would_never_produce_are_refused(changes: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        build(make_owner(**changes), FULL_SPEC)


@pytest.mark.parametrize(
    "kwargs",
    [{"domain_type": "xen"}, {"domain_type": "kvm'"}, {"arch": "x86_64'/>"}, {"machine": "pc q35"},
     {"emulator": "qemu"}, {"emulator": "/usr/bin/qemu\x01"}],
)
def test_bad_host_settings_are_refused(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        build(make_owner(), FULL_SPEC, **kwargs)


HOSTILE = "x'\"<>&;|$(id)`\n\t]]><!--"


def test_hostile_values_that_bypass_parse_spec_stay_inside_their_attributes() -> None:
    """Second line of defence: escaping. The spec parser refuses these values, the builder still
    keeps each one inside the attribute it belongs to."""
    spec = VMSpec(
        node_name="n", run_strategy="Always", paused=False, cores=1, memory_bytes=32 * 2**20,
        disks=(DiskSpec(name=HOSTILE, image=HOSTILE, size_bytes=2**20, bus="virtio"),),
        interfaces=(
            InterfaceSpec(name=HOSTILE, network=HOSTILE, bridge=None, model="virtio", mac_address=HOSTILE),
            InterfaceSpec(name="b", network=None, bridge=HOSTILE, model="virtio", mac_address=None),
        ),
    )
    owner = make_owner()
    xml = build(owner, spec, disk_paths={HOSTILE: STORAGE / "d.qcow2"})
    assert_only_intended(xml, owner, spec, [STORAGE])
    root = ET.fromstring(xml)
    assert root.find(f"metadata/{NS}instance/{NS}disks/{NS}disk").get("name") == HOSTILE  # type: ignore[union-attr]


def test_control_characters_that_xml_cannot_carry_are_refused() -> None:
    spec = VMSpec(node_name="n", run_strategy="Always", paused=False, cores=1, memory_bytes=32 * 2**20,
                  disks=(), interfaces=(InterfaceSpec(name="a", network=None, bridge="br\x1b", model="virtio",
                                                      mac_address=None),))
    with pytest.raises(ValueError, match="XML cannot carry"):
        build(make_owner(), spec)


# --- reading ownership back ---------------------------------------------------------------------------

def test_owner_and_disks_round_trip() -> None:
    owner = make_owner()
    xml = build(owner, FULL_SPEC)
    assert parse_owner(xml) == owner
    assert [p.name for p in owned_disk_paths(xml)] == ["root.qcow2", "data.qcow2", "extra.qcow2", "more.qcow2"]


FOREIGN = """<domain type='kvm'><name>someone-else</name><uuid>{uuid}</uuid><memory>1024</memory>
{metadata}<os><type>hvm</type></os></domain>"""


@pytest.mark.parametrize(
    "xml",
    [
        "",
        "not xml at all",
        "<domain",
        "<network><name>default</name></network>",
        FOREIGN.format(uuid=uuid.uuid4(), metadata=""),
        FOREIGN.format(uuid=uuid.uuid4(), metadata="<metadata><x:y xmlns:x='urn:other'/></metadata>"),
        # our element in another namespace
        FOREIGN.format(uuid=uuid.uuid4(), metadata="<metadata><lvo:instance xmlns:lvo='urn:fake'>"
                       "<lvo:owner namespace='a' name='b' uid='c' node='d'/></lvo:instance></metadata>"),
        # copied metadata: owner uid is not this domain's uuid
        FOREIGN.format(uuid="11111111-1111-1111-1111-111111111111",
                       metadata=f"<metadata><lvo:instance xmlns:lvo='{XML_NAMESPACE}'><lvo:owner namespace='a' "
                                "name='b' uid='22222222-2222-2222-2222-222222222222' node='d'/>"
                                "</lvo:instance></metadata>"),
        # incomplete owner
        FOREIGN.format(uuid="11111111-1111-1111-1111-111111111111",
                       metadata=f"<metadata><lvo:instance xmlns:lvo='{XML_NAMESPACE}'><lvo:owner namespace='a' "
                                "uid='11111111-1111-1111-1111-111111111111' node=''/></lvo:instance></metadata>"),
        # entity expansion is not even attempted
        "<!DOCTYPE d [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;&a;'>]><domain><name>&b;</name></domain>",
    ],
)
def test_foreign_or_garbage_xml_has_no_owner(xml: str) -> None:
    assert parse_owner(xml) is None
    assert owned_disk_paths(xml) == []


def test_relative_disk_paths_in_metadata_are_ignored() -> None:
    uid = "11111111-1111-1111-1111-111111111111"
    xml = FOREIGN.format(uuid=uid, metadata=(
        f"<metadata><lvo:instance xmlns:lvo='{XML_NAMESPACE}'><lvo:owner namespace='a' name='b' uid='{uid}' "
        "node='d'/><lvo:disks><lvo:disk name='a' path='rel/a.qcow2'/><lvo:disk name='b' path='/abs/b.qcow2'/>"
        "<lvo:disk name='c'/></lvo:disks></lvo:instance></metadata>"))
    assert parse_owner(xml) == Owner("a", "b", uid, "d")
    assert owned_disk_paths(xml) == [Path("/abs/b.qcow2")]


# --- property: parse_spec refuses, or libvirt accepts exactly the intended XML ------------------------

METACHARS = "<>&\"';|$`(){}[]\\/ \n\t\r\x00\x1b.-_:*?!#%~="
hostile_text = st.one_of(
    st.text(alphabet=METACHARS + "aZ09", max_size=20),
    st.text(max_size=20),
    st.sampled_from(["..", ".", "/dev/sda", "../../etc/passwd", "a" * 300, "", "$(reboot)", "br0;rm -rf /",
                     "<disk/>", "'/><x", "]]>", "&amp;", "\u202e", "\ufb00", "\u00c4"]),
)
hostile_value = st.one_of(hostile_text, st.integers(-(2**70), 2**70), st.booleans(), st.none(),
                          st.floats(allow_nan=True), st.lists(st.integers(), max_size=2), st.just({"a": 1}))
label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
file_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,14}", fullmatch=True)
memory_quantity = st.one_of(
    st.sampled_from(["16Mi", "32Mi", "64Mi", "1Gi", "0.5Gi", 2**25]),
    st.integers(2**24, 2**34),
    st.builds(lambda n, s: f"{n}{s}", st.integers(16, 4096), st.sampled_from(["Mi", "M"])),
)
size_quantity = st.one_of(
    st.integers(2**20, 2**40),
    st.builds(lambda n, s: f"{n}{s}", st.integers(1, 4096), st.sampled_from(["Mi", "M", "Gi", "G"])),
)
# Anything quantity-shaped, in or out of range.
any_quantity = st.builds(lambda n, s: f"{n}{s}", st.integers(0, 5000),
                         st.sampled_from(["", "Ki", "Mi", "Gi", "M", "G", "Ti", "Ei"]))
mac = st.from_regex(r"[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}", fullmatch=True)
# Half of these are multicast.
any_mac = st.from_regex(r"[0-9A-F]{2}(:[0-9A-F]{2}){5}", fullmatch=True)
ABSENT = object()


@st.composite
def spec_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Two examples in three are clean (so plenty reach libvirt); in the others any field may be hostile."""
    dirty = draw(st.sampled_from([False, False, True]))

    def pick(valid: st.SearchStrategy[Any], *, optional: bool = False) -> Any:
        if optional and draw(st.sampled_from(range(4))) == 0:
            return ABSENT
        if dirty and draw(st.sampled_from(range(6))) == 0:
            return draw(st.one_of(hostile_value, any_quantity, any_mac, st.just(ABSENT)))
        return draw(valid)

    def obj(**fields: Any) -> dict[str, Any]:
        return {k: v for k, v in fields.items() if v is not ABSENT}

    disks = []
    for index in range(draw(st.integers(0, 20 if dirty else 4))):
        has_image = draw(st.booleans())
        disks.append(obj(
            name=pick(st.builds("{}-{}".format, label, st.just(index)) if not dirty else label),
            image=pick(file_name) if has_image else pick(file_name, optional=True),
            size=pick(size_quantity) if not has_image else pick(size_quantity, optional=True),
            bus=pick(st.sampled_from(["virtio", "sata", "scsi"]), optional=True),
        ))
    nics = []
    for index in range(draw(st.integers(0, 10 if dirty else 3))):
        on_network = draw(st.booleans())
        nics.append(obj(
            name=pick(st.builds("{}-{}".format, label, st.just(index)) if not dirty else label),
            network=pick(file_name) if on_network else ABSENT if not dirty else pick(file_name, optional=True),
            bridge=pick(file_name.map(lambda b: b[:15])) if not on_network else ABSENT,
            model=pick(st.sampled_from(["virtio", "e1000", "rtl8139"]), optional=True),
            macAddress=pick(mac, optional=True),
        ))
    return obj(
        nodeName=pick(label),
        runStrategy=pick(st.sampled_from(["Always", "RerunOnFailure", "Manual", "Halted"]), optional=True),
        paused=pick(st.booleans(), optional=True),
        cpu=pick(st.just(obj(cores=pick(st.integers(1, 64), optional=True))), optional=True),
        memory=pick(memory_quantity),
        disks=pick(st.just(disks), optional=True),
        interfaces=pick(st.just(nics), optional=True),
    )


valid_owners = st.builds(
    Owner,
    namespace=label,
    name=st.lists(label, min_size=1, max_size=3).map(".".join),
    uid=st.uuids().map(str),
    node=label,
)


@st.composite
def hostile_owners(draw: st.DrawFn) -> Owner:
    """A valid owner with one value Kubernetes would never produce."""
    owner = draw(valid_owners)
    field = draw(st.sampled_from(["namespace", "name", "uid", "node"]))
    return dataclasses.replace(owner, **{field: draw(hostile_text)})


owners = st.one_of(valid_owners, hostile_owners())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_dict=spec_dicts(), owner=owners)
def test_any_spec_is_refused_or_defines_exactly_the_intended_domain(
    conn: libvirt.virConnect, spec_dict: dict[str, Any], owner: Owner
) -> None:
    try:
        spec = parse_spec(spec_dict)
    except SpecError as exc:
        assert exc.field.startswith("spec")
        event("refused by parse_spec")
        return
    try:
        xml = build(owner, spec)
    except ValueError:
        # Only the owner (which Kubernetes, not the user, controls) can still be refused here.
        try:
            build(make_owner(), spec)
        except ValueError as exc:
            raise AssertionError(f"builder refused a spec parse_spec accepted: {exc}") from exc
        event("owner refused by the builder")
        return
    assert_only_intended(xml, owner, spec, [STORAGE])
    try:
        libvirt_xml = define_and_undefine(conn, xml)
    except libvirt.libvirtError as exc:
        raise AssertionError(f"libvirt refused built XML: {exc}\n{xml}") from exc
    assert parse_owner(libvirt_xml) == Owner(owner.namespace, owner.name, owner.uid.lower(), owner.node)
    event("defined on libvirt")


hostile_disk = st.builds(DiskSpec, name=hostile_text, image=st.one_of(st.none(), hostile_text),
                         size_bytes=st.one_of(st.none(), st.integers(0, 2**50)),
                         bus=st.sampled_from(["virtio", "sata", "scsi"]))
hostile_nic = st.builds(
    InterfaceSpec, name=hostile_text,
    network=st.one_of(st.none(), hostile_text), bridge=hostile_text,
    model=st.sampled_from(["virtio", "e1000", "rtl8139"]), mac_address=st.one_of(st.none(), hostile_text),
)


@settings(max_examples=100, deadline=None)
@given(disks=st.lists(hostile_disk, max_size=4, unique_by=lambda d: d.name),
       nics=st.lists(hostile_nic, max_size=4), cores=st.integers(1, 2**40), memory=st.integers(0, 2**70))
def test_unvalidated_values_never_add_elements_or_attributes(
    disks: list[DiskSpec], nics: list[InterfaceSpec], cores: int, memory: int
) -> None:
    spec = VMSpec(node_name="n", run_strategy="Always", paused=False, cores=cores, memory_bytes=memory,
                  disks=tuple(disks), interfaces=tuple(nics))
    owner = make_owner()
    paths = {d.name: STORAGE / f"disk{i}.qcow2" for i, d in enumerate(disks)}
    try:
        xml = build(owner, spec, disk_paths=paths)
    except ValueError as exc:
        assert "XML cannot carry" in str(exc)
        return
    assert_only_intended(xml, owner, spec, [STORAGE])
