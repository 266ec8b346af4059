"""The two-host test bed's pure parts (testbed/hypervisors.py): its libvirt config edits and names."""

from __future__ import annotations

from pathlib import Path

from testbed.hypervisors import BIND_DIRS, INIT, HypervisorHosts, _not_copied, _set_keys


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


def test_a_host_copies_no_guest_definitions_of_the_machine_not_even_one_being_written() -> None:
    names = ["web.xml", "web.xml.new", "networks", "autostart"]
    assert _not_copied("/etc/libvirt/qemu", names) == {"web.xml", "web.xml.new", "autostart"}
    assert _not_copied("/etc/libvirt/qemu/networks", ["default.xml", "autostart"]) == {"autostart"}
    assert _not_copied("/etc/libvirt", ["hooks", "secrets", "qemu.conf"]) == {"hooks", "secrets"}
