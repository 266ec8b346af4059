"""Disk storage with the real qemu-img: images are only taken from the image directory, disks appear
complete or not at all, failures clean up after themselves."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from libvirt_operator.api.spec import DiskSpec, VMSpec, parse_spec
from libvirt_operator.hypervisor import storage as storage_module
from libvirt_operator.hypervisor.storage import Storage, StorageError

UID = "0b6f6b3e-5a4e-4c51-9d0c-5d1c7f3b2a10"
MiB = 2**20


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(tmp_path / "images", tmp_path / "disks")


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def info(path: Path) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True, capture_output=True,
                         text=True, timeout=60)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def spec_with(*disks: dict[str, Any]) -> VMSpec:
    return parse_spec({"nodeName": "n", "memory": "32Mi", "disks": list(disks)})


def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def test_directories_are_created_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = Storage(Path("a/images"), Path("b/disks"))
    assert storage.image_dir == tmp_path / "a" / "images" and storage.image_dir.is_dir()
    assert storage.storage_dir == tmp_path / "b" / "disks" and storage.storage_dir.is_dir()


@pytest.mark.parametrize("uid", ["", ".", "..", "../etc", "a/b", "/abs", ".hidden", "a" * 129, "a\x00b", "x y"])
def test_uids_that_could_escape_the_storage_directory_are_refused(storage: Storage, uid: str) -> None:
    with pytest.raises(StorageError) as info:
        storage.vm_dir(uid)
    assert info.value.field == "metadata.uid"


# --- base images ---------------------------------------------------------------------------------------

def test_qcow2_and_raw_images_resolve_inside_the_image_directory(storage: Storage) -> None:
    qemu_img("create", "-f", "qcow2", str(storage.image_dir / "base.qcow2"), "2M")
    (storage.image_dir / "disk.raw").write_bytes(b"\0" * MiB)
    (storage.image_dir / "alias.qcow2").symlink_to("base.qcow2")
    assert storage.resolve_image("base.qcow2", "f") == storage.image_dir / "base.qcow2"
    assert storage.inspect_image("disk.raw", "f").format == "raw"
    assert storage.resolve_image("alias.qcow2", "f") == storage.image_dir / "base.qcow2"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("/etc/passwd", "absolute path"),
        ("sub/base.qcow2", "is a path"),
        ("../disks/x.qcow2", "is a path"),
        ("..", "must not start with '.'"),
        (".hidden.qcow2", "must not start with '.'"),
        ("", "non-empty"),
        ("a b", "not a valid image file name"),
        ("missing.qcow2", "not found"),
    ],
)
def test_image_names_that_are_not_plain_existing_files_are_refused(
    storage: Storage, image: str, message: str
) -> None:
    (storage.image_dir / ".hidden.qcow2").write_bytes(b"\0" * 512)
    with pytest.raises(StorageError, match=message) as info:
        storage.resolve_image(image, "spec.disks[0].image")
    assert info.value.field == "spec.disks[0].image"


def test_a_missing_image_names_the_directory_it_was_looked_up_in(storage: Storage) -> None:
    with pytest.raises(StorageError) as info:
        storage.resolve_image("base.qcow2", "spec.disks[0].image")
    assert str(info.value) == f"spec.disks[0].image: image 'base.qcow2' not found in {storage.image_dir}"


def test_symlinks_leading_outside_the_image_directory_are_refused(storage: Storage, tmp_path: Path) -> None:
    outside = tmp_path / "outside.qcow2"
    qemu_img("create", "-f", "qcow2", str(outside), "1M")
    (storage.image_dir / "escape.qcow2").symlink_to(outside)
    (storage.image_dir / "device").symlink_to("/dev/null")
    (storage.image_dir / "dangling.qcow2").symlink_to(tmp_path / "nothing")
    (storage.image_dir / "loop.qcow2").symlink_to("loop.qcow2")
    for name in ("escape.qcow2", "device"):
        with pytest.raises(StorageError, match="leads outside the image directory"):
            storage.resolve_image(name, "f")
    for name in ("dangling.qcow2", "loop.qcow2"):
        with pytest.raises(StorageError, match="not found"):
            storage.resolve_image(name, "f")


def test_things_that_are_not_disk_images_are_refused(storage: Storage, tmp_path: Path) -> None:
    images = storage.image_dir
    (images / "notes.txt").write_text("hello, not a disk\n")
    (images / "empty.img").write_bytes(b"")
    (images / "folder").mkdir()
    os.mkfifo(images / "pipe")
    qemu_img("create", "-f", "vmdk", str(images / "other.vmdk"), "1M")
    qemu_img("create", "-f", "qcow2", str(tmp_path / "elsewhere.qcow2"), "1M")
    qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", str(tmp_path / "elsewhere.qcow2"),
             str(images / "chained.qcow2"))
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", str(images / "external.qcow2"),
             "1M")
    expected = {
        "notes.txt": "not a disk image",
        "empty.img": "not a disk image",
        "folder": "not a regular file",
        "pipe": "not a regular file",
        "other.vmdk": "qcow2 or raw",
        "chained.qcow2": "has a backing file",
        "external.qcow2": "external data file",
    }
    for name, message in expected.items():
        with pytest.raises(StorageError, match=message) as info:
            storage.resolve_image(name, "spec.disks[3].image")
        assert info.value.field == "spec.disks[3].image", name


# --- disks ---------------------------------------------------------------------------------------------

def test_empty_disk_is_a_qcow2_of_the_requested_size(storage: Storage) -> None:
    paths = storage.prepare_disks(UID, spec_with({"name": "data", "size": "3Mi"}))
    assert paths == {"data": storage.storage_dir / UID / "data.qcow2"}
    details = info(paths["data"])
    assert (details["format"], details["virtual-size"]) == ("qcow2", 3 * MiB)
    assert "backing-filename" not in details
    assert files_in(storage.storage_dir / UID) == ["data.qcow2"]


def test_sizes_are_rounded_up_to_whole_sectors(storage: Storage) -> None:
    spec = VMSpec(node_name="n", run_strategy="Always", paused=False, cores=1, memory_bytes=32 * MiB,
                  disks=(DiskSpec(name="odd", image=None, size_bytes=MiB + 1, bus="virtio"),), interfaces=())
    paths = storage.prepare_disks(UID, spec)
    assert info(paths["odd"])["virtual-size"] == MiB + 512


def test_image_disk_is_an_overlay_on_the_resolved_base(storage: Storage) -> None:
    qemu_img("create", "-f", "qcow2", str(storage.image_dir / "base.qcow2"), "2M")
    (storage.image_dir / "latest").symlink_to("base.qcow2")
    (storage.image_dir / "disk.raw").write_bytes(b"\0" * (2 * MiB))
    paths = storage.prepare_disks(UID, spec_with(
        {"name": "root", "image": "latest"},
        {"name": "grown", "image": "base.qcow2", "size": "8Mi"},
        {"name": "raw", "image": "disk.raw", "size": "2Mi"},
    ))
    root, grown, raw = info(paths["root"]), info(paths["grown"]), info(paths["raw"])
    assert root["full-backing-filename"] == str(storage.image_dir / "base.qcow2")
    assert root["backing-filename-format"] == "qcow2"
    assert (root["virtual-size"], grown["virtual-size"]) == (2 * MiB, 8 * MiB)
    assert (raw["backing-filename-format"], raw["virtual-size"]) == ("raw", 2 * MiB)


def test_overlay_smaller_than_its_image_is_refused_naming_the_size(storage: Storage) -> None:
    qemu_img("create", "-f", "qcow2", str(storage.image_dir / "base.qcow2"), "4M")
    with pytest.raises(StorageError, match="can only grow") as info:
        storage.prepare_disks(UID, spec_with({"name": "root", "image": "base.qcow2", "size": "2Mi"}))
    assert info.value.field == "spec.disks[0].size"
    assert not (storage.storage_dir / UID).exists()


def test_preparing_again_keeps_existing_disks_and_adds_new_ones(storage: Storage) -> None:
    first = storage.prepare_disks(UID, spec_with({"name": "data", "size": "1Mi"}))
    inode = first["data"].stat().st_ino
    qemu_img("resize", str(first["data"]), "5M")  # stands in for data the guest wrote
    second = storage.prepare_disks(UID, spec_with({"name": "data", "size": "1Mi"}, {"name": "more", "size": "1Mi"}))
    assert second["data"] == first["data"] and second["data"].stat().st_ino == inode
    assert info(second["data"])["virtual-size"] == 5 * MiB
    assert files_in(storage.storage_dir / UID) == ["data.qcow2", "more.qcow2"]


def test_failure_removes_only_what_this_call_created(storage: Storage) -> None:
    storage.prepare_disks(UID, spec_with({"name": "old", "size": "1Mi"}))
    with pytest.raises(StorageError) as info:
        storage.prepare_disks(UID, spec_with(
            {"name": "old", "size": "1Mi"}, {"name": "new", "size": "1Mi"}, {"name": "bad", "image": "nope.qcow2"}))
    assert info.value.field == "spec.disks[2].image"
    assert "not found" in str(info.value)
    assert files_in(storage.storage_dir / UID) == ["old.qcow2"]


def test_failure_on_a_new_vm_leaves_no_directory(storage: Storage) -> None:
    with pytest.raises(StorageError):
        storage.prepare_disks(UID, spec_with({"name": "a", "size": "1Mi"}, {"name": "b", "image": "missing.qcow2"}))
    assert storage.list_vm_dirs() == []


def test_qemu_img_errors_are_reported_with_its_message(storage: Storage) -> None:
    spec = VMSpec(node_name="n", run_strategy="Always", paused=False, cores=1, memory_bytes=32 * MiB,
                  disks=(DiskSpec(name="ok", image=None, size_bytes=MiB, bus="virtio"),
                         DiskSpec(name="huge", image=None, size_bytes=2**63, bus="virtio")), interfaces=())
    with pytest.raises(StorageError) as info:
        storage.prepare_disks(UID, spec)
    assert info.value.field == "spec.disks[1]"
    assert "qemu-img create failed" in info.value.message and "size" in info.value.message.lower()
    assert storage.list_vm_dirs() == []


def fake_qemu_img(tmp_path: Path, script: str) -> str:
    path = tmp_path / "fake-qemu-img"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


def test_a_full_disk_fails_cleanly_with_the_cause(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # qemu-img leaves a partial file behind and reports ENOSPC, as on a full storage directory.
    # Arguments end with "<file> <size>".
    script = (f'for arg; do file=$size; size=$arg; done; echo partial > "$file"; echo "$file" > {tmp_path}/made\n'
              'echo "qemu-img: $file: Could not resize file: No space left on device" >&2; exit 1')
    monkeypatch.setattr(storage_module, "QEMU_IMG", fake_qemu_img(tmp_path, script))
    with pytest.raises(StorageError, match="No space left on device") as info:
        storage.prepare_disks(UID, spec_with({"name": "data", "size": "1Mi"}))
    assert info.value.field == "spec.disks[0]"
    assert storage.list_vm_dirs() == []
    partial = Path((tmp_path / "made").read_text().strip())
    assert partial.parent == storage.storage_dir / UID and not partial.exists()


def test_a_hanging_qemu_img_times_out(storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (storage.image_dir / "base.qcow2").write_bytes(b"\0" * 512)
    monkeypatch.setattr(storage_module, "QEMU_IMG", fake_qemu_img(tmp_path, "exec sleep 30"))
    monkeypatch.setattr(storage_module, "INFO_TIMEOUT", 0.2)
    with pytest.raises(StorageError, match="did not finish") as info:
        storage.resolve_image("base.qcow2", "spec.disks[0].image")
    assert info.value.field == "spec.disks[0].image"


def test_stale_temporary_disks_from_a_crash_are_removed(storage: Storage) -> None:
    vm_dir = storage.storage_dir / UID
    vm_dir.mkdir()
    (vm_dir / ".data.qcow2.1234abcd.tmp").write_bytes(b"half a disk")
    storage.prepare_disks(UID, spec_with({"name": "data", "size": "1Mi"}))
    assert files_in(vm_dir) == ["data.qcow2"]


def test_a_disk_path_occupied_by_a_symlink_is_refused(storage: Storage, tmp_path: Path) -> None:
    vm_dir = storage.storage_dir / UID
    vm_dir.mkdir()
    (vm_dir / "data.qcow2").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StorageError, match="not a regular file") as info:
        storage.prepare_disks(UID, spec_with({"name": "data", "size": "1Mi"}))
    assert info.value.field == "spec.disks[0]"


def test_vm_without_disks_gets_an_empty_directory(storage: Storage) -> None:
    assert storage.prepare_disks(UID, spec_with()) == {}
    assert storage.list_vm_dirs() == [UID]


# --- removal and listing ------------------------------------------------------------------------------

def test_removing_a_vm_directory_is_idempotent(storage: Storage) -> None:
    storage.prepare_disks(UID, spec_with({"name": "data", "size": "1Mi"}))
    assert storage.remove_vm_dir(UID) is True
    assert not (storage.storage_dir / UID).exists()
    assert storage.remove_vm_dir(UID) is False


def test_removing_a_symlinked_vm_directory_never_touches_its_target(storage: Storage, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep").write_text("x")
    (storage.storage_dir / UID).symlink_to(target)
    assert storage.remove_vm_dir(UID) is True
    assert (target / "keep").exists()
    assert not (storage.storage_dir / UID).is_symlink()


def test_listing_shows_only_vm_directories(storage: Storage, tmp_path: Path) -> None:
    storage.prepare_disks(UID, spec_with())
    storage.mark_node("node-a")
    (storage.storage_dir / "stray-file").write_text("")
    (storage.storage_dir / "linked").symlink_to(tmp_path)
    assert storage.list_vm_dirs() == [UID]


# --- shared storage ------------------------------------------------------------------------------------

def test_forced_shared_storage_settings_win(storage: Storage) -> None:
    storage.mark_node("node-b")
    assert storage.is_shared("node-a", "true") is True
    assert storage.is_shared("node-a", "false") is False


def test_auto_detects_other_nodes_markers(tmp_path: Path) -> None:
    node_a = Storage(tmp_path / "images", tmp_path / "shared")
    node_b = Storage(tmp_path / "images", tmp_path / "shared")
    node_a.mark_node("node-a")
    assert node_a.is_shared("node-a", "auto") is False
    node_b.mark_node("node-b")
    assert node_a.is_shared("node-a", "auto") is True
    assert node_b.is_shared("node-b", "auto") is True
    node_a.mark_node("node-a")  # marking again (a restart) is fine
    assert files_in(tmp_path / "shared" / ".nodes") == ["node-a", "node-b"]


def test_auto_never_counts_a_node_of_another_api(tmp_path: Path) -> None:
    mine = Storage(tmp_path / "images", tmp_path / "disks", cluster="uid-of-api-1")
    other_api = Storage(tmp_path / "images", tmp_path / "disks", cluster="uid-of-api-2")
    mine.mark_node("node-a")
    other_api.mark_node("node-b")
    assert mine.is_shared("node-a", "auto") is False
    assert other_api.is_shared("node-b", "auto") is False
    Storage(tmp_path / "images", tmp_path / "disks", cluster="uid-of-api-1").mark_node("node-c")
    assert mine.is_shared("node-a", "auto") is True


def test_auto_counts_markers_whose_api_is_unknown(tmp_path: Path) -> None:
    """Markers of older operators (no API identity) count: taking storage for shared only keeps disks."""
    Storage(tmp_path / "images", tmp_path / "disks").mark_node("node-old")
    assert Storage(tmp_path / "images", tmp_path / "disks", cluster="uid-1").is_shared("node-a", "auto") is True
    Storage(tmp_path / "images", tmp_path / "other", cluster="uid-2").mark_node("node-b")
    assert Storage(tmp_path / "images", tmp_path / "other").is_shared("node-a", "auto") is True


def test_bad_settings_and_node_names_are_refused(storage: Storage) -> None:
    with pytest.raises(ValueError):
        storage.is_shared("node-a", "maybe")
    for bad in ("../escape", "a/b", "", "Node"):
        with pytest.raises(ValueError):
            storage.mark_node(bad)
