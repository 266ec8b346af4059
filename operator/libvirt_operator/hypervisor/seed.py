"""The cloud-init NoCloud seed: its files (pure), and the ISO 9660 image (volume label ``cidata``) built
from them with genisoimage, in the VM's own directory under the storage directory (never a path the user
names).

``meta-data`` carries ``instance-id`` = the VM's uid (cloud-init runs its per-instance modules once per
VirtualMachine object, also across restarts) and ``local-hostname`` = its name. SSH keys of the spec are
merged into the user-data's ``ssh_authorized_keys``; that needs user-data that is a ``#cloud-config``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from libvirt_operator.api.quantity import SpecError
from libvirt_operator.api.spec import MAX_CLOUD_INIT_BYTES, MAX_SSH_KEY_LENGTH, MAX_SSH_KEYS, SSH_PUBLIC_KEY

GENISOIMAGE = "genisoimage"
SEED_NAME = "cidata.iso"
VOLUME_LABEL = "cidata"
ISO_TIMEOUT = 60.0
CLOUD_CONFIG_HEADER = "#cloud-config"
_SSH_KEY = re.compile(SSH_PUBLIC_KEY)


@dataclass(frozen=True)
class SeedData:
    """What the seed carries, already resolved (a Secret's keys read, SSH keys still separate)."""

    user_data: str | None
    network_data: str | None
    ssh_authorized_keys: tuple[str, ...] = ()
    # The spec field the user-data came from, for messages.
    user_data_field: str = "spec.cloudInit.userData"


def seed_files(*, uid: str, name: str, data: SeedData) -> dict[str, bytes]:
    """Pure: file name -> content of the NoCloud seed. Raises SpecError when the keys cannot be merged."""
    meta = yaml.safe_dump({"instance-id": uid, "local-hostname": _hostname(name)}, sort_keys=False)
    files = {"meta-data": meta.encode(), "user-data": merged_user_data(data).encode()}
    if data.network_data is not None:
        files["network-config"] = data.network_data.encode()
    return files


def merged_user_data(data: SeedData) -> str:
    """Pure: the user-data with the spec's SSH keys added to ``ssh_authorized_keys`` (kept once each)."""
    text = data.user_data
    if not data.ssh_authorized_keys:
        return text if text is not None else CLOUD_CONFIG_HEADER + "\n"
    if text is None or not text.strip():
        config: dict[str, Any] = {}
    else:
        if text.split("\n", 1)[0].rstrip() != CLOUD_CONFIG_HEADER:
            raise SpecError("spec.sshAuthorizedKeys", f"can only be merged into user-data that is a cloud-config "
                                                      f"(first line {CLOUD_CONFIG_HEADER}); {data.user_data_field} "
                                                      "is not")
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(data.user_data_field, f"is not valid YAML: {_first_line(exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise SpecError(data.user_data_field, "must be a YAML mapping (a cloud-config) to take SSH keys")
        config = loaded
    existing = config.get("ssh_authorized_keys")
    if existing is None:
        existing = []
    if not isinstance(existing, list) or not all(isinstance(k, str) for k in existing):
        raise SpecError(data.user_data_field, "ssh_authorized_keys must be a list of strings")
    keys = list(existing) + [k for k in data.ssh_authorized_keys if k not in existing]
    config["ssh_authorized_keys"] = keys
    return CLOUD_CONFIG_HEADER + "\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def digest(files: Mapping[str, bytes]) -> str:
    """Pure: a digest of the seed's files, to tell whether the ISO on disk is current."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + len(files[name]).to_bytes(8, "big") + files[name])
    return h.hexdigest()


def write_seed(vm_dir: Path, files: Mapping[str, bytes]) -> tuple[Path, bool]:
    """Blocking: the seed ISO in ``vm_dir`` holding ``files``; returns (path, whether it was (re)written).

    Written to a hidden temporary file and renamed: a running QEMU keeps the old one open (the change
    reaches the guest at its next boot), and a crash never leaves a half-made seed under the final name.
    """
    path = vm_dir / SEED_NAME
    stamp = vm_dir / f".{SEED_NAME}.sha256"
    wanted = digest(files)
    with contextlib.suppress(OSError):
        if path.is_file() and not path.is_symlink() and stamp.read_text().strip() == wanted:
            return path, False
    temp = vm_dir / f".{SEED_NAME}.{secrets.token_hex(4)}.tmp"
    with tempfile.TemporaryDirectory(prefix="lvo-seed-") as staging:
        names = []
        for name, content in sorted(files.items()):
            (Path(staging) / name).write_bytes(content)
            names.append(str(Path(staging) / name))
        try:
            done = subprocess.run([GENISOIMAGE, "-quiet", "-output", str(temp), "-volid", VOLUME_LABEL,
                                   "-joliet", "-rock", *names], capture_output=True, text=True,
                                  timeout=ISO_TIMEOUT)
        except FileNotFoundError:
            raise SeedError(f"{GENISOIMAGE} is not installed on this node (Debian package genisoimage): "
                            "cannot build the cloud-init seed") from None
        except subprocess.TimeoutExpired:
            temp.unlink(missing_ok=True)
            raise SeedError(f"{GENISOIMAGE} did not finish within {ISO_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        temp.unlink(missing_ok=True)
        raise SeedError(f"{GENISOIMAGE} failed: {done.stderr.strip()[-500:]}")
    temp.chmod(0o644)  # QEMU (another user) reads it
    os.replace(temp, path)
    stamp_temp = vm_dir / f".{SEED_NAME}.sha256.{secrets.token_hex(4)}.tmp"
    stamp_temp.write_text(wanted + "\n")
    os.replace(stamp_temp, stamp)
    return path, True


class SeedError(Exception):
    """The node could not build a seed (not the user's input)."""


def secret_seed_data(secret_name: str, data: Mapping[str, bytes], keys: Sequence[str]) -> SeedData:
    """Pure: the seed data of a Secret's decoded ``data`` (KubeVirt's keys userdata, networkdata)."""
    field = "spec.cloudInit.secretRef.name"
    if "userdata" not in data and "networkdata" not in data:
        raise SpecError(field, f"Secret {secret_name!r} has neither a key userdata nor networkdata")

    def text(key: str) -> str | None:
        raw = data.get(key)
        if raw is None:
            return None
        if len(raw) > MAX_CLOUD_INIT_BYTES:
            raise SpecError(field, f"Secret {secret_name!r}: key {key} is larger than {MAX_CLOUD_INIT_BYTES} bytes")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError(field, f"Secret {secret_name!r}: key {key} is not UTF-8 text") from None
    return SeedData(user_data=text("userdata"), network_data=text("networkdata"),
                    ssh_authorized_keys=tuple(keys), user_data_field=f"Secret {secret_name!r} key userdata")


def secret_ssh_keys(secret_name: str, data: Mapping[str, bytes], field: str) -> list[str]:
    """Pure: the public keys of a Secret: every line of every value (KubeVirt's accessCredentials), in key
    order; blank lines and # comments skipped; anything else that is no key line is refused naming ``field``."""
    keys: list[str] = []
    for key in sorted(data):
        try:
            text = data[key].decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError(field, f"Secret {secret_name!r}: key {key} is not UTF-8 text") from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if len(line) > MAX_SSH_KEY_LENGTH or not _SSH_KEY.fullmatch(line):
                raise SpecError(field, f"Secret {secret_name!r}: key {key} line {number} is not an OpenSSH public "
                                       "key line")
            if line not in keys:
                keys.append(line)
    if not keys:
        raise SpecError(field, f"Secret {secret_name!r} holds no public key")
    if len(keys) > MAX_SSH_KEYS:
        raise SpecError(field, f"Secret {secret_name!r} holds {len(keys)} keys; at most {MAX_SSH_KEYS} are allowed")
    return keys


def _hostname(name: str) -> str:
    # A VM name is a DNS-1123 subdomain: a valid host name as it is (cloud-init takes a dotted one as FQDN).
    return name


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
