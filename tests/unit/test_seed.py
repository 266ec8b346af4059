"""The cloud-init NoCloud seed: its files (pure), SSH keys merged into the user-data, and the ISO on disk."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from libvirt_operator.api.quantity import SpecError
from libvirt_operator.hypervisor.seed import (
    SeedData,
    merged_user_data,
    secret_seed_data,
    secret_ssh_keys,
    seed_files,
    write_seed,
)

UID = "0b9a3c1e-2f4d-4e5a-8b6c-7d8e9f0a1b2c"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7x user@host"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC8y other@host"


def test_meta_data_names_the_vm_uid_as_instance_and_its_name_as_host() -> None:
    files = seed_files(uid=UID, name="web-1", data=SeedData("#cloud-config\n", None))
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": UID, "local-hostname": "web-1"}
    assert files["user-data"] == b"#cloud-config\n"
    assert "network-config" not in files


def test_network_data_becomes_network_config_as_given() -> None:
    files = seed_files(uid=UID, name="web-1", data=SeedData(None, "version: 2\nethernets: {}\n"))
    assert files["network-config"] == b"version: 2\nethernets: {}\n"
    assert files["user-data"] == b"#cloud-config\n"  # cloud-init needs a user-data file, even an empty one


def test_user_data_without_keys_is_passed_through_byte_for_byte() -> None:
    script = "#!/bin/sh\necho hi > /tmp/x\n"
    assert merged_user_data(SeedData(script, None)) == script


def test_keys_alone_make_a_cloud_config() -> None:
    text = merged_user_data(SeedData(None, None, (KEY,)))
    assert text.startswith("#cloud-config\n")
    assert yaml.safe_load(text) == {"ssh_authorized_keys": [KEY]}


def test_keys_are_merged_into_a_cloud_config_keeping_its_own_and_each_key_once() -> None:
    user = "#cloud-config\nruncmd: [touch /x]\nssh_authorized_keys: ['" + OTHER + "', '" + KEY + "']\n"
    text = merged_user_data(SeedData(user, None, (KEY, KEY)))
    assert text.startswith("#cloud-config\n")
    assert yaml.safe_load(text) == {"runcmd": ["touch /x"], "ssh_authorized_keys": [OTHER, KEY]}


@pytest.mark.parametrize(("user", "field"), [
    ("#!/bin/sh\necho hi\n", "spec.sshAuthorizedKeys"),
    ("#cloud-config\n[unclosed\n", "spec.cloudInit.userData"),
    ("#cloud-config\n- a list\n", "spec.cloudInit.userData"),
    ("#cloud-config\nssh_authorized_keys: oops\n", "spec.cloudInit.userData"),
])
def test_keys_that_cannot_be_merged_are_refused_naming_the_field(user: str, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        merged_user_data(SeedData(user, None, (KEY,)))
    assert caught.value.field == field


def test_a_secret_gives_userdata_and_networkdata() -> None:
    data = secret_seed_data("seed", {"userdata": b"#cloud-config\n", "networkdata": b"version: 2\n"}, [KEY])
    assert (data.user_data, data.network_data, data.ssh_authorized_keys) == ("#cloud-config\n", "version: 2\n",
                                                                              (KEY,))


@pytest.mark.parametrize("data", [{}, {"other": b"x"}, {"userdata": b"\xff\xfe"}, {"userdata": b"#" * 262145}])
def test_a_secret_without_usable_keys_is_refused_naming_the_secret_ref(data: dict[str, bytes]) -> None:
    with pytest.raises(SpecError) as caught:
        secret_seed_data("seed", data, [])
    assert caught.value.field == "spec.cloudInit.secretRef.name" and "'seed'" in str(caught.value)


needs_genisoimage = pytest.mark.skipif(shutil.which("genisoimage") is None or shutil.which("isoinfo") is None,
                                       reason="genisoimage/isoinfo not installed")


def _iso_file(iso: Path, name: str) -> str:
    return subprocess.run(["isoinfo", "-R", "-i", str(iso), "-x", f"/{name}"], capture_output=True, text=True,
                          check=True).stdout


@needs_genisoimage
def test_the_seed_is_an_iso_labelled_cidata_with_the_files_and_is_rebuilt_only_on_change(tmp_path: Path) -> None:
    files = seed_files(uid=UID, name="web-1", data=SeedData("#cloud-config\n", "version: 2\n", (KEY,)))
    iso, changed = write_seed(tmp_path, files)
    assert changed and iso == tmp_path / "cidata.iso"
    info = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True, check=True).stdout
    assert "Volume id: cidata" in info
    assert _iso_file(iso, "meta-data") == files["meta-data"].decode()
    assert _iso_file(iso, "user-data") == files["user-data"].decode()
    assert _iso_file(iso, "network-config") == "version: 2\n"
    assert iso.stat().st_mode & 0o777 == 0o644
    inode = iso.stat().st_ino

    assert write_seed(tmp_path, files) == (iso, False)
    assert iso.stat().st_ino == inode

    changed_files = seed_files(uid=UID, name="web-1", data=SeedData("#cloud-config\nruncmd: []\n", None))
    assert write_seed(tmp_path, changed_files) == (iso, True)
    assert iso.stat().st_ino != inode  # a new file: a running QEMU keeps reading the old one
    assert "runcmd" in _iso_file(iso, "user-data")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cidata.iso.sha256", "cidata.iso"]


def test_a_secrets_values_give_public_keys_one_per_line_each_once() -> None:
    data = {"b": f"# laptop\n{OTHER}\n\n".encode(), "a": f"{KEY}\n{OTHER}\n".encode()}
    assert secret_ssh_keys("keys", data, "spec.sshAuthorizedKeysSecretRef.name") == [KEY, OTHER]


@pytest.mark.parametrize("data", [{}, {"a": b"# only a comment\n"}, {"a": b"not a key\n"}, {"a": b"\xff"},
                                  {"a": f'command="/bin/sh" {KEY}'.encode()}])
def test_a_secret_without_clean_key_lines_is_refused_naming_the_field(data: dict[str, bytes]) -> None:
    with pytest.raises(SpecError) as caught:
        secret_ssh_keys("keys", data, "spec.sshAuthorizedKeysSecretRef.name")
    assert caught.value.field == "spec.sshAuthorizedKeysSecretRef.name" and "'keys'" in str(caught.value)
