"""Base images from http(s) URLs: downloaded once per node into a cache, verified, shared by VMs.

Blocking (callers run it in a thread). The cache is ``<storage_dir>/.images/<sha256>``: named by the
checksum the spec gives, so a file under its final name has been verified (it is renamed there only after
the SHA-256 matched) and every VM naming the same checksum shares it. A download goes to a hidden
temporary file first, is bounded in size, and follows redirects to http(s) only. Two VMs asking at once
download once (an flock on the cache entry's lock file).

Cached images no disk uses any more are removed once unused for ``--image-cache-ttl`` seconds
(``remove_unused``, from the periodic full sync): a disk's backing file, read from its qcow2 header, is
what uses one, whichever VM or node the disk belongs to (shared storage). A cached file is touched each
time a VM is provisioned from it, and removed under its lock, so a VM about to use it keeps it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from libvirt_operator.api.spec import URL_SCHEMES

CACHE_DIR = ".images"
CHUNK = 1 << 20
TIMEOUT = 30.0  # seconds without progress (connect, or between chunks)

Progress = Callable[[int, int | None], None]  # (bytes so far, total when known)


class ImageImportError(Exception):
    """A download that failed; ``field`` names the spec field to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    # urllib follows redirects to ftp:// too; an image comes over http(s) or not at all.
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if newurl.split("://", 1)[0].lower() not in URL_SCHEMES:
            raise urllib.error.HTTPError(newurl, code, f"redirect to a refused URL scheme: {newurl[:200]}",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects())


def cached_path(storage_dir: Path, sha256: str) -> Path:
    return Path(storage_dir) / CACHE_DIR / sha256.lower()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch(url: str, sha256: str, storage_dir: Path, *, field: str, max_bytes: int,
          progress: Progress | None = None) -> Path:
    """The verified cached file for ``url``; downloads it unless already cached. ``field``: the disk's
    spec path (spec.disks[i]); messages name its ``.image`` or ``.sha256``."""
    sha256 = sha256.lower()
    final = cached_path(storage_dir, sha256)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{sha256}.lock"):
        if final.is_file() and not final.is_symlink():
            os.utime(final)  # in use again: the unused-image clean-up counts from now
            return final  # cached (or another VM's download finished meanwhile)
        temp = final.parent / f".{sha256}.{secrets.token_hex(4)}.tmp"
        try:
            digest = _download(url, temp, field=field, max_bytes=max_bytes, progress=progress)
            if digest != sha256:
                raise ImageImportError(f"{field}.sha256", f"the image downloaded from {url} has SHA-256 {digest}, "
                                                      f"not {sha256}: refused")
            temp.chmod(0o644)  # QEMU (another user) reads backing files
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)
    return final


def _download(url: str, temp: Path, *, field: str, max_bytes: int, progress: Progress | None) -> str:
    where = f"{field}.image"
    h = hashlib.sha256()
    try:
        with _OPENER.open(urllib.request.Request(url, headers={"User-Agent": "libvirt-operator"}),
                          timeout=TIMEOUT) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise ImageImportError(where, f"{url} is {total} bytes, more than this node's limit of {max_bytes}")
            done = 0
            with open(temp, "wb") as out:
                while chunk := resp.read(CHUNK):
                    done += len(chunk)
                    if done > max_bytes:
                        raise ImageImportError(where, f"{url} is larger than this node's limit of {max_bytes} bytes")
                    h.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
    except urllib.error.HTTPError as exc:
        raise ImageImportError(where, f"downloading {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise ImageImportError(where, f"downloading {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed answer
        raise ImageImportError(where, f"downloading {url}: {exc}") from None
    return h.hexdigest()


_QCOW2_MAGIC = b"QFI\xfb"


def qcow2_backing_file(path: Path) -> str | None:
    """The backing file a qcow2 image's header names (None: none, or not a qcow2 file)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
            if len(header) < 20 or header[:4] != _QCOW2_MAGIC:
                return None
            offset, size = struct.unpack(">QI", header[8:20])
            if not offset or not 0 < size <= 4096:
                return None
            handle.seek(offset)
            return handle.read(size).decode("utf-8", "replace")
    except OSError:
        return None


def unused_images(cached: dict[str, float], used: set[str], *, now: float, ttl: float) -> list[str]:
    """Pure: the cached files (path -> mtime) no disk uses and unused for longer than ``ttl`` seconds."""
    return sorted(path for path, mtime in cached.items() if path not in used and now - mtime > ttl)


def remove_unused(storage_dir: Path, ttl: float) -> list[str]:
    """Blocking: remove cached images no disk under ``storage_dir`` uses; returns their checksums."""
    cache = Path(storage_dir) / CACHE_DIR
    if ttl <= 0 or not cache.is_dir():
        return []
    # Both sides resolved: Storage writes the backing file's resolved path into the overlay, while the storage
    # directory may be given through a symlink (a used image must never look unused).
    cached = {os.path.realpath(p): p.stat().st_mtime for p in cache.iterdir()
              if p.is_file() and not p.is_symlink() and not p.name.startswith(".")}
    if not cached:
        return []
    used = set()
    for disk in Path(storage_dir).glob("*/*.qcow2"):
        backing = qcow2_backing_file(disk)
        if backing is not None:
            used.add(os.path.realpath(disk.parent / backing))  # an absolute backing path replaces disk.parent
    removed = []
    for path in unused_images(cached, used, now=time.time(), ttl=ttl):
        name = Path(path).name
        with _locked(cache / f".{name}.lock"):
            try:  # again under the lock: a VM provisioned meanwhile touched it
                if time.time() - os.stat(path).st_mtime <= ttl:
                    continue
                os.unlink(path)
            except FileNotFoundError:
                continue
        removed.append(name)
    return removed
