"""URL images: downloaded once per node from a local HTTP server on 127.0.0.1, verified by SHA-256,
bounded, http(s) only, shared by VMs; and through the operator (test:///default): the overlay on the cached
base, a bad checksum Failed naming the field."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libvirt_operator.handlers.vm import _download_message
from libvirt_operator.hypervisor.image_import import (
    ImageImportError,
    cached_path,
    fetch,
    qcow2_backing_file,
    remove_unused,
    unused_images,
)
from testbed.polling import until
from tests.unit import test_event_pipeline
from tests.unit.test_event_pipeline import Env

env = test_event_pipeline.env  # the fixture: operator, API emulator and test:///default


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "ftp://127.0.0.1/base.qcow2")
                    self.end_headers()
                    return
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    root = tmp_path / "www"
    root.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root / "base.qcow2"), "64M"], check=True)
    server = Server(root)
    try:
        yield server, hashlib.sha256((root / "base.qcow2").read_bytes()).hexdigest()
    finally:
        server.close()


def test_a_good_download_is_cached_under_its_checksum_once(served: tuple[Server, str], tmp_path: Path) -> None:
    server, sha = served
    seen: list[tuple[int, int | None]] = []
    path = fetch(f"{server.url}/base.qcow2", sha.upper(), tmp_path / "disks", field="spec.disks[0]",
                 max_bytes=2**30, progress=lambda done, total: seen.append((done, total)))
    assert path == cached_path(tmp_path / "disks", sha)
    assert path.read_bytes() == (server.root / "base.qcow2").read_bytes()
    assert seen and seen[-1][0] == seen[-1][1] == path.stat().st_size
    assert fetch(f"{server.url}/base.qcow2", sha, tmp_path / "disks", field="f", max_bytes=2**30) == path
    assert server.requests == ["/base.qcow2"]  # the second one came from the cache
    assert sorted(p.name for p in path.parent.iterdir()) == [f".{sha}.lock", sha]


@pytest.mark.parametrize(("path", "sha", "limit", "field", "words"), [
    ("/base.qcow2", "0" * 64, 2**30, "spec.disks[1].sha256", "has SHA-256"),
    ("/base.qcow2", None, 1000, "spec.disks[1].image", "limit"),
    ("/missing.qcow2", None, 2**30, "spec.disks[1].image", "HTTP 404"),
    ("/redirect", None, 2**30, "spec.disks[1].image", "refused URL scheme"),
])
def test_a_bad_download_is_refused_naming_the_field_and_leaves_nothing(
        served: tuple[Server, str], tmp_path: Path, path: str, sha: str | None, limit: int, field: str,
        words: str) -> None:
    server, good = served
    with pytest.raises(ImageImportError) as caught:
        fetch(server.url + path, sha or good, tmp_path / "disks", field="spec.disks[1]", max_bytes=limit)
    assert caught.value.field == field and words in caught.value.message, caught.value
    assert [p.name for p in (tmp_path / "disks" / ".images").iterdir() if not p.name.endswith(".lock")] == []


def _qemu_img_info(disk: Path) -> str:
    return subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)], capture_output=True, text=True,
                          check=True).stdout


async def test_vms_share_a_downloaded_base_and_a_bad_checksum_fails_naming_the_field(
        env: Env, served: tuple[Server, str]) -> None:
    server, sha = served
    url = f"{server.url}/base.qcow2"
    uids = [await env.create(name, runStrategy="Halted", disks=[{"name": "root", "image": url, "sha256": sha}])
            for name in ("url-a", "url-b")]
    for name in ("url-a", "url-b"):
        await until(lambda n=name: env.status(n).get("phase") == "Stopped", what=f"{name} defined")  # type: ignore[misc]
    assert server.requests == ["/base.qcow2"]
    base = cached_path(Path(env.runtime.settings.storage_dir), sha)
    for uid in uids:
        disk = Path(env.runtime.settings.storage_dir) / uid / "root.qcow2"
        info = json.loads(await asyncio.to_thread(_qemu_img_info, disk))
        assert info["backing-filename"] == str(base)
    assert "ImageImported" in env.reasons("url-a")

    await env.create("url-bad", runStrategy="Halted", disks=[{"name": "root", "image": url, "sha256": "1" * 64}])
    status = await until(lambda: env.status("url-bad").get("phase") == "Failed" and env.status("url-bad"),
                         what="Failed")
    assert status["message"].startswith("spec.disks[0].sha256: the image downloaded from"), status["message"]


def test_the_download_progress_message_names_the_disk_and_the_share_done() -> None:
    assert _download_message("spec.disks[0]", "http://h/x", {"done": 2**20, "total": 4 * 2**20}) == (
        "spec.disks[0]: downloading http://h/x: 1.0 MiB of 4.0 MiB (25%)")
    assert _download_message("spec.disks[0]", "http://h/x", {"done": 0, "total": None}) == (
        "spec.disks[0]: downloading http://h/x: 0.0 MiB")


def test_an_unused_cached_image_goes_after_the_ttl_one_a_disk_uses_or_just_touched_stays(tmp_path: Path) -> None:
    storage = tmp_path / "disks"
    cache = storage / ".images"
    cache.mkdir(parents=True)
    used_sha, unused_sha, fresh_sha = "a" * 64, "b" * 64, "c" * 64
    for sha in (used_sha, unused_sha, fresh_sha):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(cache / sha), "1M"], check=True)
    vm_dir = storage / "some-uid"
    vm_dir.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(cache / used_sha),
                    str(vm_dir / "root.qcow2")], check=True)  # as Storage._create_disk makes an overlay
    assert qcow2_backing_file(vm_dir / "root.qcow2") == str(cache / used_sha)
    assert qcow2_backing_file(cache / used_sha) is None
    old = time.time() - 7200
    for sha in (used_sha, unused_sha, fresh_sha):
        os.utime(cache / sha, (old, old))
    os.utime(cache / fresh_sha)  # provisioned from a moment ago (fetch touches it)
    assert remove_unused(storage, ttl=3600) == [unused_sha]
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [used_sha, fresh_sha]
    assert remove_unused(storage, ttl=0) == []  # 0: kept for ever


def test_unused_images_is_a_pure_choice_by_use_and_age() -> None:
    cached = {"/c/a": 100.0, "/c/b": 100.0, "/c/c": 990.0}
    assert unused_images(cached, {"/c/a"}, now=1000.0, ttl=60.0) == ["/c/b"]


def test_an_image_used_through_a_symlinked_storage_directory_is_kept(tmp_path: Path) -> None:
    real = tmp_path / "real-disks"
    (real / ".images").mkdir(parents=True)
    link = tmp_path / "disks"
    link.symlink_to(real)  # the operator's --storage-dir, given through a symlink
    sha = "d" * 64
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(link / ".images" / sha), "1M"], check=True)
    (link / "uid").mkdir()
    base = (link / ".images" / sha).resolve()  # what Storage._create_disk writes into the overlay
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
                    str(link / "uid" / "root.qcow2")], check=True)
    old = time.time() - 7200
    os.utime(link / ".images" / sha, (old, old))
    assert remove_unused(link, ttl=3600) == []
    assert (real / ".images" / sha).exists()
