"""Objects, the shared resourceVersion counter, the bounded event history and the open watches.

Everything here is synchronous and runs on the event loop: a commit assigns the next
resourceVersion, stores the object, appends the event to the history and hands it to every watch
of that resource before any other coroutine runs, so watches see events in resourceVersion order
and a watch started "from now" can never miss or repeat one.

Stored objects are never mutated after a commit (writers build a new dict), so history entries and
queued events may share them without copies.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kube_emulator import errors

JSON = dict[str, Any]
StorageKey = tuple[str, str]  # (group, plural)
ObjectKey = tuple[str, str]  # (namespace or "", name)

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


@dataclass(eq=False)
class Event:
    rv: int
    key: StorageKey
    type: str
    obj: JSON
    old: JSON | None = None  # the previous state, so that selectors can see an object leave or enter
    encoded: dict[Any, bytes] = field(default_factory=dict)  # serialised once per representation


class Watcher:
    """The queue of one open watch; the store closes it if the client falls too far behind."""

    def __init__(self, key: StorageKey, limit: int) -> None:
        self.key = key
        self._limit = limit
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.closed = False

    def push(self, event: Event) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self._limit:
            # A client this slow would hold unbounded memory: end its watch, as the apiserver does.
            self.close()
            return
        self._queue.put_nowait(event)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)

    def pending(self) -> bool:
        return not self._queue.empty()

    async def next(self, within: float | None) -> Event | None:
        """The next event; None once closed. Raises TimeoutError when nothing came `within` seconds."""
        if self.closed and self._queue.empty():
            return None
        async with asyncio.timeout(within):
            return await self._queue.get()


class Store:
    def __init__(self, history_limit: int = 10000) -> None:
        if history_limit < 1:
            raise ValueError("history_limit must be at least 1")
        self._rv = 0
        self._objects: dict[StorageKey, dict[ObjectKey, JSON]] = collections.defaultdict(dict)
        self._history: collections.deque[Event] = collections.deque()
        self._history_limit = history_limit
        self._compacted = 0  # events at or below this resourceVersion may be gone from the history
        self._watchers: dict[StorageKey, set[Watcher]] = collections.defaultdict(set)
        self.on_commit: list[Callable[[], None]] = []  # told after every commit (the state file's writer)

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    @property
    def history_size(self) -> int:
        return len(self._history)

    def get(self, key: StorageKey, namespace: str, name: str) -> JSON | None:
        return self._objects[key].get((namespace, name))

    def objects_of(self, key: StorageKey, namespace: str | None = None) -> list[JSON]:
        """Objects in etcd key order (namespace, then name)."""
        found = self._objects[key]
        keys = sorted(k for k in found if namespace is None or k[0] == namespace)
        return [found[k] for k in keys]

    def count_in_namespace(self, namespace: str) -> int:
        return sum(1 for objs in self._objects.values() for ns, _ in objs if ns == namespace)

    def keys(self) -> list[StorageKey]:
        return [k for k, objs in self._objects.items() if objs]

    def commit(self, key: StorageKey, event_type: str, obj: JSON, old: JSON | None = None) -> JSON:
        """Store `obj` (or remove it for DELETED) under the next resourceVersion and announce it."""
        self._rv += 1
        meta = obj["metadata"] = dict(obj["metadata"])
        meta["resourceVersion"] = str(self._rv)
        object_key = (meta.get("namespace", ""), meta["name"])
        if event_type == DELETED:
            self._objects[key].pop(object_key, None)
        else:
            self._objects[key][object_key] = obj
        event = Event(self._rv, key, event_type, obj, old)
        self._history.append(event)
        while len(self._history) > self._history_limit:
            self._compacted = self._history.popleft().rv
        for watcher in list(self._watchers.get(key, ())):
            watcher.push(event)
        for callback in self.on_commit:
            callback()
        return obj

    def restore(self, rv: int, objects: Iterable[tuple[StorageKey, JSON]]) -> None:
        """Load saved objects into an empty store. The counter continues from `rv`; the history before
        it is gone, so a watch from an older resourceVersion gets 410 Expired."""
        if self._rv or self.keys():
            raise RuntimeError("restore() needs an empty store")
        for key, obj in objects:
            meta = obj["metadata"]
            self._objects[key][(meta.get("namespace", ""), meta["name"])] = obj
        self._rv = self._compacted = rv

    def start_history(self) -> None:
        """Watches may start from now on, not earlier: kube-apiserver's watch caches start with the server,
        so a watch from a resourceVersion older than that gets 410 Expired."""
        self._compacted = self._rv

    def since(self, key: StorageKey, rv: int) -> list[Event]:
        """The events of `key` after `rv`; 410 Expired if some of them may have left the history."""
        if rv < self._compacted:
            raise errors.expired(f"too old resource version: {rv} ({self._compacted})")
        return [e for e in self._history if e.rv > rv and e.key == key]

    def watch(self, key: StorageKey) -> Watcher:
        watcher = Watcher(key, self._history_limit)
        self._watchers[key].add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        watcher.close()
        self._watchers[watcher.key].discard(watcher)

    def close_watchers(self, key: StorageKey | None = None) -> None:
        for watch_key, watchers in self._watchers.items():
            if key is None or watch_key == key:
                for watcher in list(watchers):
                    watcher.close()

    @property
    def watch_count(self) -> int:
        return sum(len(w) for w in self._watchers.values())
