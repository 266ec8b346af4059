#!/usr/bin/env python3
"""Write a one-layer OCI image archive (an `oci-archive` tarball) from files on disk, with the stdlib only.

The node's pod sandbox ("pause") image cannot be pulled here, so hack/cluster.sh builds its own from a
static binary and loads the archive into containerd (`ctr -n k8s.io images import`).

    oci_archive.py OUT.tar REF ENTRYPOINT SRC=DEST [SRC=DEST ...]
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
import time


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))
    return digest


def build(out: str, ref: str, entrypoint: list[str], files: dict[str, str]) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for src, dest in files.items():
            info = layer.gettarinfo(src, arcname=dest.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            with open(src, "rb") as handle:
                layer.addfile(info, handle)
    diff_id = hashlib.sha256(raw.getvalue()).hexdigest()
    compressed = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0)),
        "config": {"Entrypoint": entrypoint, "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
    }, sort_keys=True).encode()
    with tarfile.open(out, "w") as tar:
        layer_digest = _blob(tar, compressed)
        config_digest = _blob(tar, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": f"sha256:{config_digest}", "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": f"sha256:{layer_digest}", "size": len(compressed)}],
        }, sort_keys=True).encode()
        manifest_digest = _blob(tar, manifest)
        for name, data in (
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps({"schemaVersion": 2, "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{manifest_digest}",
                "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": ref,
                                                       "io.containerd.image.name": ref}}]}).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def main(argv: list[str]) -> None:
    if len(argv) < 4:
        sys.exit(__doc__)
    out, ref, entrypoint, *pairs = argv
    build(out, ref, [entrypoint], dict(p.split("=", 1) for p in pairs))


if __name__ == "__main__":
    main(sys.argv[1:])
