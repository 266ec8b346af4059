"""`libvirt-operator console`: the VM named, its console's log found from the domain (rotated copies first),
and only a domain the operator owns touched."""

from __future__ import annotations

import uuid
from pathlib import Path

import libvirt
import pytest

from libvirt_operator import cli
from libvirt_operator.api.spec import parse_spec
from libvirt_operator.console import console_log_of, log_files, parse_target
from libvirt_operator.hypervisor.domain_xml import Owner, build_domain_xml


@pytest.mark.parametrize(("text", "expected"), [("team-a/web.1", ("team-a", "web.1")), ("web", ("default", "web"))])
def test_the_vm_is_namespace_slash_name(text: str, expected: tuple[str, str]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["a/b/c", "Team/web", "team/", "team/a_b", "../x"])
def test_what_cannot_name_a_vm_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_target(text)


def test_rotated_logs_come_first_oldest_first() -> None:
    log = Path("/d/console.log")
    names = ["console.log", "console.log.1", "console.log.0", "console.log.x", "cidata.iso", "console.log.10"]
    assert log_files(log, names) == [Path("/d/console.log.10"), Path("/d/console.log.1"), Path("/d/console.log.0"),
                                     log]
    assert log_files(log, []) == []


def test_console_log_prints_the_kept_log_of_an_owned_domain_and_refuses_others(
        conn: libvirt.virConnect, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    owner = Owner(namespace="default", name=f"con-{uuid.uuid4().hex[:6]}", uid=str(uuid.uuid4()), node="n")
    log = tmp_path / owner.uid / "console.log"
    log.parent.mkdir()
    log.write_bytes(b"[    0.000000] Linux version 6.1\n")
    (tmp_path / owner.uid / "console.log.0").write_bytes(b"older boot\n")
    xml = build_domain_xml(owner=owner, spec=parse_spec({"nodeName": "n", "memory": "32Mi"}), domain_type="test",
                           disk_paths={}, allowed_dirs=[tmp_path], console_log=log)
    assert console_log_of(xml) == log.resolve()
    dom = conn.defineXML(xml)
    foreign = conn.defineXML(f"<domain type='test'><name>default_foreign-{owner.uid[:6]}</name>"
                             "<memory>32768</memory><os><type>hvm</type></os></domain>")
    try:
        assert cli.main(["console", "--log", "--libvirt-uri", "test:///default", f"default/{owner.name}"]) == 0
        assert capsysbinary.readouterr().out == b"older boot\n[    0.000000] Linux version 6.1\n"
        assert cli.main(["console", "--log", "--libvirt-uri", "test:///default",
                         f"default/foreign-{owner.uid[:6]}"]) == 1
        assert b"left alone" in capsysbinary.readouterr().err
        assert cli.main(["console", "--log", "--libvirt-uri", "test:///default", "default/absent"]) == 1
    finally:
        dom.undefine()
        foreign.undefine()
