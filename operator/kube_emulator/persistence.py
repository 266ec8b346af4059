"""The store on disk: one JSON file, loaded at start, rewritten after changes (debounced) and at stop.

Local mode keeps its objects across restarts this way, so that the operator that comes back finds its
VirtualMachines instead of orphaned domains to destroy. Only the objects and the resourceVersion counter
are kept, not the watch history: a watch from a resourceVersion older than the restart gets 410 Expired
and the client lists again, as after an etcd compaction.

The file is replaced atomically (a temporary file in the same directory, fsync, os.replace): a crash
mid-write leaves the previous state, never half of one. It holds Secrets, so it is private (0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kube_emulator.store import StorageKey, Store

logger = logging.getLogger(__name__)
JSON = dict[str, Any]
KIND = "KubeEmulatorState"
FORMAT_VERSION = 1
WRITE_INTERVAL = 0.5  # seconds: at most one write per interval while changes keep coming


class StateFileError(Exception):
    """The state file exists but cannot be used (starting empty instead would lose every object)."""


def encode(store: Store) -> JSON:
    """The store as one JSON document. Stored objects are never mutated after a commit, so the
    document may be serialised off the event loop while the store goes on."""
    groups = [{"group": group, "plural": plural, "items": store.objects_of((group, plural))}
              for group, plural in sorted(store.keys())]
    return {"kind": KIND, "version": FORMAT_VERSION, "resourceVersion": store.resource_version, "objects": groups}


def decode(doc: Any, path: Path) -> tuple[int, list[tuple[StorageKey, JSON]]]:
    """(resourceVersion, objects) of a document written by `encode`."""
    try:
        if doc.get("kind") != KIND or doc.get("version") != FORMAT_VERSION:
            raise StateFileError(f"{path} is not a version-{FORMAT_VERSION} {KIND} file")
        rv = int(doc["resourceVersion"])
        objects = [((str(g["group"]), str(g["plural"])), obj) for g in doc["objects"] for obj in g["items"]]
        for _key, obj in objects:
            if not isinstance(obj, dict) or not obj["metadata"]["name"] or \
                    int(obj["metadata"]["resourceVersion"]) > rv:
                raise StateFileError(f"{path}: an object is malformed or newer than the file")
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise StateFileError(f"{path} is malformed: {exc!r}") from None
    return rv, objects


def read(path: Path) -> tuple[int, list[tuple[StorageKey, JSON]]] | None:
    """Blocking: the saved state, or None when there is no file yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"cannot read {path}: {exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise StateFileError(f"{path} is not JSON: {exc}") from None
    return decode(doc, path)


_write_lock = threading.Lock()  # one writer at a time, so that the last state written is the last one asked


def write(path: Path, doc: JSON) -> None:
    """Blocking: replace `path` with `doc`, atomically."""
    data = json.dumps(doc, separators=(",", ":")).encode()
    with _write_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:  # mkstemp creates it 0600
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


class StateWriter:
    """Writes the store to `path` at most every `interval` seconds while it changes, and once at close."""

    def __init__(self, path: Path, store: Store, interval: float = WRITE_INTERVAL,
                 encoder: Callable[[Store], JSON] = encode) -> None:
        self.path = path
        self.store = store
        self.interval = interval
        self._encode = encoder
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.writes = 0

    def start(self) -> None:
        self.store.on_commit.append(self._changed.set)
        self._task = asyncio.create_task(self._run(), name="kube-emulator-state")

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            await asyncio.sleep(self.interval)  # gathers a burst of changes into one write
            self._changed.clear()
            doc = self._encode(self.store)
            try:
                await asyncio.to_thread(write, self.path, doc)
                self.writes += 1
            except OSError as exc:  # a full disk must not stop the server; the next change retries
                logger.error("cannot write the emulator state to %s: %s", self.path, exc)
                self._changed.set()

    async def close(self) -> None:
        """Stop the periodic writes and write what is there now."""
        if self._changed.set in self.store.on_commit:
            self.store.on_commit.remove(self._changed.set)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(write, self.path, self._encode(self.store))
        self.writes += 1
