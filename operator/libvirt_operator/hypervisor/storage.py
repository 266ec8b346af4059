"""VM disk files under the node's storage directory, and base images from its image directory.

All functions block (they run ``qemu-img``); callers run them in a thread. Layout::

    <storage_dir>/<metadata.uid>/<disk name>.qcow2     one directory per VM, removed as a whole
    <storage_dir>/.nodes/<node name>                  markers for shared-storage detection (node name,
                                                      then the identity of the node's API, if known)

A disk appears under its final name only once complete (created under a hidden temporary name, then
renamed), so a crash mid-creation never leaves a half-made disk that a later run would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libvirt_operator.api.spec import DNS1123_SUBDOMAIN, FILE_NAME, DiskSpec, VMSpec
from libvirt_operator.hypervisor import image_import

QEMU_IMG = "qemu-img"
INFO_TIMEOUT = 30.0
CREATE_TIMEOUT = 120.0
NODES_DIR = ".nodes"
IMAGE_FORMATS = ("qcow2", "raw")

_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # a Kubernetes uid (UUID); never "." or ".."
_FILE_NAME = re.compile(FILE_NAME)
_NODE = re.compile(DNS1123_SUBDOMAIN)
_TEMP_SUFFIX = ".tmp"
_SECTOR = 512


class StorageError(Exception):
    """A disk or image problem. ``field`` names the spec field to blame (None: not the user's input)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    path: Path  # resolved, inside the image directory
    format: str  # qcow2 | raw
    virtual_size: int  # bytes


class Storage:
    def __init__(self, image_dir: Path, storage_dir: Path, *, cluster: str | None = None) -> None:
        """``cluster`` identifies the node's API (cluster); shared-storage detection counts only the
        markers of nodes of the same one, so that two API servers on one machine never see each other."""
        self.cluster = cluster
        Path(image_dir).mkdir(parents=True, exist_ok=True)
        Path(storage_dir).mkdir(parents=True, exist_ok=True)
        # Resolved once, so every path handed out is absolute and symlink-free (the XML builder checks
        # disk paths against these same resolved directories).
        self.image_dir = Path(image_dir).resolve()
        self.storage_dir = Path(storage_dir).resolve()

    # --- per-VM directories -------------------------------------------------------------------------

    def vm_dir(self, uid: str) -> Path:
        if not isinstance(uid, str) or not _UID.fullmatch(uid):
            raise StorageError("metadata.uid", f"{uid!r} cannot name a storage directory")
        return self.storage_dir / uid

    def remove_vm_dir(self, uid: str) -> bool:
        """Remove the VM's disks; False when there was nothing to remove."""
        path = self.vm_dir(uid)
        try:
            if path.is_symlink():  # not something we made: drop the link, never what it points to
                path.unlink()
                return True
            if not path.exists():
                return False
            shutil.rmtree(path)
        except OSError as exc:
            raise StorageError(None, f"cannot remove {path}: {exc.strerror or exc}") from exc
        return True

    def list_vm_dirs(self) -> list[str]:
        """UIDs that have a disk directory here (hidden entries and stray files ignored)."""
        try:
            entries = list(os.scandir(self.storage_dir))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries
                      if _UID.fullmatch(e.name) and e.is_dir(follow_symlinks=False))

    # --- base images --------------------------------------------------------------------------------

    def resolve_image(self, image: str, field: str) -> Path:
        """The base image file for a spec's ``image`` name, proven safe to use as a backing file."""
        return self.inspect_image(image, field).path

    def inspect_image(self, image: str, field: str) -> ImageInfo:
        if not isinstance(image, str) or not image:
            raise StorageError(field, "must be a non-empty file name")
        if image.startswith("/"):
            raise StorageError(field, f"{image!r} is an absolute path; give a file name in the image directory")
        if "/" in image or "\\" in image:
            raise StorageError(field, f"{image!r} is a path; give a file name in the image directory")
        if image.startswith("."):
            raise StorageError(field, f"{image!r} must not start with '.' (no hidden files, no '..')")
        if len(image) > 255 or not _FILE_NAME.fullmatch(image):
            raise StorageError(field, f"{image!r} is not a valid image file name")

        root = self.image_dir
        candidate = root / image
        try:
            resolved = candidate.resolve(strict=True)
        except (FileNotFoundError, RuntimeError):  # missing, dangling or looping symlink
            raise StorageError(field, f"image {image!r} not found in {root}") from None
        if resolved == root or not resolved.is_relative_to(root):
            raise StorageError(field, f"image {image!r} is a symlink that leads outside the image directory")
        if not resolved.is_file():
            raise StorageError(field, f"image {image!r} is not a regular file")
        return self._inspect_file(resolved, field, image)

    def inspect_cached(self, url: str, sha256: str, field: str) -> ImageInfo:
        """A downloaded image (image_import.fetch put it in the cache, verified), checked like a local one."""
        path = image_import.cached_path(self.storage_dir, sha256)
        if not path.is_file() or path.is_symlink():
            raise StorageError(field, f"image {url!r} has not been downloaded")
        return self._inspect_file(path, field, url)

    def _inspect_file(self, resolved: Path, field: str, image: str) -> ImageInfo:
        info = self._qemu_img_info(resolved, field, image)
        fmt = info.get("format")
        if fmt not in IMAGE_FORMATS:
            raise StorageError(field, f"image {image!r} is not a disk image qemu-img recognises as qcow2 or raw "
                                      f"(detected: {fmt})")
        # A backing file or external data file could point anywhere on the host (even a device):
        # base images must be self-contained.
        if info.get("backing-filename") or info.get("full-backing-filename"):
            raise StorageError(field, f"image {image!r} has a backing file; base images must be standalone "
                                      "(flatten it with qemu-img convert)")
        specific = info.get("format-specific")
        data = specific.get("data") if isinstance(specific, dict) else None
        if isinstance(data, dict) and data.get("data-file"):
            raise StorageError(field, f"image {image!r} uses an external data file, which is not allowed")
        if info.get("encrypted"):
            raise StorageError(field, f"image {image!r} is encrypted, which is not supported")
        if fmt == "raw":
            # Anything is "raw" to qemu-img; a raw disk at least has whole sectors.
            size = resolved.stat().st_size
            if size == 0 or size % _SECTOR:
                raise StorageError(field, f"image {image!r} is not a disk image (raw, {size} bytes: not a "
                                          f"multiple of {_SECTOR})")
        virtual_size = info.get("virtual-size")
        if not isinstance(virtual_size, int) or virtual_size <= 0:
            raise StorageError(field, f"image {image!r} has no usable virtual size")
        return ImageInfo(path=resolved, format=fmt, virtual_size=virtual_size)

    def _qemu_img_info(self, path: Path, field: str, image: str) -> dict[str, Any]:
        # -U: read even while running guests hold locks on the base image (we only read).
        result = _run([QEMU_IMG, "info", "-U", "--output=json", str(path)], INFO_TIMEOUT, field)
        if result.returncode != 0:
            raise StorageError(field, f"image {image!r} cannot be read by qemu-img: {_stderr(result)}")
        try:
            info = json.loads(result.stdout)
        except ValueError:
            raise StorageError(field, f"image {image!r}: qemu-img info gave unreadable output") from None
        if not isinstance(info, dict):
            raise StorageError(field, f"image {image!r}: qemu-img info gave unexpected output")
        return info

    def resolve_boot_file(self, name: str, field: str) -> Path:
        """A kernel or initrd for direct kernel boot: a regular file in the image directory (resolved, so
        a symlink cannot lead QEMU to a host file)."""
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith(".") \
                or len(name) > 255 or not _FILE_NAME.fullmatch(name):
            raise StorageError(field, f"{name!r} must be a file name in the image directory")
        root = self.image_dir
        try:
            resolved = (root / name).resolve(strict=True)
        except (FileNotFoundError, RuntimeError):
            raise StorageError(field, f"{name!r} not found in {root}") from None
        if resolved == root or not resolved.is_relative_to(root):
            raise StorageError(field, f"{name!r} is a symlink that leads outside the image directory")
        if not resolved.is_file():
            raise StorageError(field, f"{name!r} is not a regular file")
        return resolved

    def console_log_path(self, uid: str) -> Path:
        """The serial console's log (written by libvirt's virtlogd), in the VM's directory."""
        return self.vm_dir(uid) / "console.log"

    # --- disks --------------------------------------------------------------------------------------

    def disk_path(self, uid: str, disk_name: str) -> Path:
        return self.vm_dir(uid) / f"{disk_name}.qcow2"

    def prepare_disks(self, uid: str, spec: VMSpec) -> dict[str, Path]:
        """Make sure every disk of ``spec`` exists; returns disk name -> file.

        Existing disks are kept as they are (idempotent across retries and restarts). On failure, the
        disks (and the directory) this call created are removed and StorageError names the field.
        """
        vm_dir = self.vm_dir(uid)
        created_dir = False
        created: list[Path] = []
        result: dict[str, Path] = {}
        index = -1
        try:
            try:
                vm_dir.mkdir()
                created_dir = True
            except FileExistsError:
                if vm_dir.is_symlink() or not vm_dir.is_dir():
                    raise StorageError(None, f"{vm_dir} exists and is not a directory") from None
            _remove_stale_temps(vm_dir)
            for index, disk in enumerate(spec.disks):
                final = vm_dir / f"{disk.name}.qcow2"
                if final.is_symlink() or (final.exists() and not final.is_file()):
                    raise StorageError(f"spec.disks[{index}]", f"{final} exists and is not a regular file")
                if not final.exists():
                    self._create_disk(vm_dir, final, disk, index)
                    created.append(final)
                result[disk.name] = final
            _fsync_dir(vm_dir)
        except BaseException as exc:
            for path in created:
                path.unlink(missing_ok=True)
            if created_dir:
                shutil.rmtree(vm_dir, ignore_errors=True)
            if isinstance(exc, OSError):
                field = f"spec.disks[{index}]" if index >= 0 else None
                raise StorageError(field, f"cannot create disk: {exc.strerror or exc}") from exc
            raise
        return result

    def _create_disk(self, vm_dir: Path, final: Path, disk: DiskSpec, index: int) -> None:
        field = f"spec.disks[{index}]"
        size = None if disk.size_bytes is None else _round_up(disk.size_bytes, _SECTOR)
        command = [QEMU_IMG, "create", "-q", "-f", "qcow2"]
        if disk.image is not None:
            if disk.image_url is not None and disk.sha256 is not None:
                base = self.inspect_cached(disk.image_url, disk.sha256, f"{field}.image")
            else:
                base = self.inspect_image(disk.image, f"{field}.image")
            if size is not None and size < base.virtual_size:
                raise StorageError(f"{field}.size", f"{size} bytes is smaller than image {disk.image!r} "
                                                    f"({base.virtual_size} bytes); disks can only grow")
            command += ["-F", base.format, "-b", str(base.path)]
            if size == base.virtual_size:
                size = None
        temp = vm_dir / f".{final.name}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
        command.append(str(temp))
        if size is not None:
            command.append(str(size))
        try:
            result = _run(command, CREATE_TIMEOUT, field)
            if result.returncode != 0:
                raise StorageError(field, f"qemu-img create failed: {_stderr(result)}")
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.rename(temp, final)
        finally:
            temp.unlink(missing_ok=True)

    # --- shared storage -----------------------------------------------------------------------------

    def mark_node(self, node_name: str) -> None:
        """Leave this node's marker, so operators on other nodes that see the directory know it is shared."""
        path = self._marker(node_name)
        path.parent.mkdir(exist_ok=True)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")
        try:
            temp.write_text(node_name + "\n" + (f"{self.cluster}\n" if self.cluster else ""))
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)

    def is_shared(self, node_name: str, setting: str) -> bool:
        """Whether other nodes see this storage directory: forced by ``setting``, or detected ("auto").

        Detection is nova's trick: each node leaves a marker; seeing another node's marker means the
        directory is shared. A node that has not started yet is not seen, so "auto" errs on "not shared".
        A marker of another API's node is not counted; one whose API is unknown (older markers, or this
        node's own API unknown) is, since believing storage shared only keeps disks.
        """
        choice = setting.strip().lower()
        if choice in ("true", "false"):
            return choice == "true"
        if choice != "auto":
            raise ValueError(f"shared storage setting must be auto, true or false, not {setting!r}")
        own = self._marker(node_name).name
        try:
            names = os.listdir(self.storage_dir / NODES_DIR)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return any(name != own and _NODE.fullmatch(name) and self._same_cluster(name) for name in names)

    def _same_cluster(self, marker_name: str) -> bool:
        if not self.cluster:
            return True
        try:
            lines = (self.storage_dir / NODES_DIR / marker_name).read_text().splitlines()
        except OSError:
            return True  # there, but unreadable: count it
        return len(lines) < 2 or not lines[1] or lines[1] == self.cluster

    def _marker(self, node_name: str) -> Path:
        if not isinstance(node_name, str) or len(node_name) > 253 or not _NODE.fullmatch(node_name):
            raise ValueError(f"node name {node_name!r} is not a DNS-1123 subdomain")
        return self.storage_dir / NODES_DIR / node_name


def _run(command: Sequence[str], timeout: float, field: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LC_ALL="C")
    try:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, env=env,
                              check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise StorageError(field, f"{command[0]} {command[1]} did not finish within {timeout:g}s") from None
    except OSError as exc:
        raise StorageError(None, f"cannot run {command[0]}: {exc.strerror or exc}") from exc


def _stderr(result: subprocess.CompletedProcess[str]) -> str:
    text = (result.stderr or result.stdout or "").strip()
    return text[-2000:] if text else f"exit status {result.returncode}"


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _remove_stale_temps(vm_dir: Path) -> None:
    """Temporary disks left by a crashed earlier attempt (only this module makes hidden *.tmp files)."""
    for entry in os.scandir(vm_dir):
        if entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _fsync_dir(path: Path) -> None:
    # The renames must survive a host crash too, not only the file contents.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
