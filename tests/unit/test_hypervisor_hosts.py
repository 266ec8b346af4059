"""The test bed's pure parts: the two-host config edits and names (testbed/hypervisors.py), the guests' CPU
weight (testbed/hosts.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import hosts
from testbed.hypervisors import BIND_DIRS, INIT, HypervisorHosts, _set_keys


def test_config_keys_are_replaced_once_and_comments_are_kept(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('#user = "libvirt-qemu"\nuser = "nobody"\nvnc_listen = "0.0.0.0"\n  group="x"\n')
    _set_keys(conf, {"user": '"root"', "group": '"root"'}, ("user", "group"))
    assert conf.read_text() == '#user = "libvirt-qemu"\nvnc_listen = "0.0.0.0"\nuser = "root"\ngroup = "root"\n'


def test_hosts_get_their_own_addresses_veths_and_directories() -> None:
    hosts = HypervisorHosts(["node-a", "node-b"], subnet=98)
    try:
        a, b = hosts.hosts
        assert (a.address, b.address) == ("10.98.0.1", "10.98.0.2")
        assert (a.migration_uri, b.migration_uri) == ("qemu+tcp://10.98.0.1/system", "qemu+tcp://10.98.0.2/system")
        assert b.uri == f"qemu:///system?socket={hosts.base}/node-b/run/libvirt/libvirt-sock"
        assert a.host_uuid != b.host_uuid
        assert all(len(veth) <= 15 for veth in hosts.veths) and hosts.veths[0] != hosts.veths[1]  # IFNAMSIZ
        assert {"run/libvirt", "etc/libvirt"} <= set(BIND_DIRS) and "mount --bind" in INIT
    finally:
        hosts.close()
    assert not hosts.base.exists()


def test_guests_cpu_priority_multiplies_the_guests_weight_and_restores_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = tmp_path / "cpu.shares", tmp_path / "missing" / "cpu.weight"
    v1.write_text("1024\n")
    monkeypatch.setattr(hosts, "GUESTS_CPU_WEIGHT", ((v2, 100), (v1, 1024)))
    with hosts.guests_cpu_priority(8) as changed:
        assert changed == v1 and v1.read_text() == "8192"
    assert v1.read_text() == "1024"
    monkeypatch.setattr(hosts, "GUESTS_CPU_WEIGHT", ((v2, 100),))
    with hosts.guests_cpu_priority(8) as changed:
        assert changed is None
