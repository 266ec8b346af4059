"""Watch streams: newline-delimited JSON events over one chunked HTTP response.

As kube-apiserver's watch cache does it:

- no resourceVersion (or "0"): the current objects first, as ADDED, then changes (kube 1.34 makes
  this a watch-list: `sendInitialEvents` is implied, so with bookmarks the initial-events-end BOOKMARK
  follows them);
- a resourceVersion: the kept history after it, then changes; older than the history: one ERROR
  event carrying a 410 `Expired` Status, in a 200 response;
- `sendInitialEvents=true`: the current objects, then a BOOKMARK annotated
  `k8s.io/initial-events-end: "true"` (kopf's and client-go's streaming lists);
- `allowWatchBookmarks=true`: a BOOKMARK every bookmark interval and 2 s before `timeoutSeconds`
  ends the stream, carrying the resourceVersion of the resource's latest change, once that is newer
  than where the watch started (an idle resource gets none);
- selectors see both sides of a change: an object that starts matching arrives as ADDED, one that
  stops matching as DELETED;
- `timeoutSeconds` ends the stream; so do the client going away, the server stopping, and the
  client falling too far behind (its queue would otherwise grow without bound).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kube_emulator import errors, table
from kube_emulator.resources import Resource
from kube_emulator.store import ADDED, DELETED, MODIFIED, Event, Store, Watcher

logger = logging.getLogger(__name__)
JSON = dict[str, Any]
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
PRE_TIMEOUT_BOOKMARK = 2.0  # seconds before a watch's deadline that the watch cache sends a BOOKMARK


@dataclass
class WatchRequest:
    res: Resource
    namespace: str | None  # None: all namespaces (or a cluster-scoped resource)
    predicate: Callable[[JSON], bool] | None
    resource_version: str | None
    bookmarks: bool
    send_initial_events: bool
    timeout: float | None
    table_columns: list[table.ColumnSpec] | None  # set when the client asked for Table events
    table_version: str = "v1"
    include_object: str = table.INCLUDE_METADATA


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class WatchStream:
    def __init__(self, store: Store, request: WatchRequest, bookmark_interval: float) -> None:
        self.store = store
        self.req = request
        self.bookmark_interval = bookmark_interval
        self._headers_sent = False

    def _visible(self, obj: JSON | None) -> bool:
        if obj is None:
            return False
        if self.req.namespace is not None and obj["metadata"].get("namespace") != self.req.namespace:
            return False
        return self.req.predicate is None or self.req.predicate(obj)

    def _translate(self, event: Event) -> str | None:
        """The event type this watch reports for `event`, None if it does not concern it."""
        now_visible = self._visible(event.obj)
        if event.type == ADDED:
            return ADDED if now_visible else None
        if event.type == DELETED:
            return DELETED if self._visible(event.old or event.obj) else None
        was_visible = self._visible(event.old) if event.old is not None else now_visible
        if now_visible and was_visible:
            return MODIFIED
        if now_visible:
            return ADDED
        if was_visible:
            return DELETED
        return None

    def _encode(self, event_type: str, event: Event) -> bytes:
        if self.req.table_columns is not None:
            return self._encode_table(event_type, event.obj)
        cache_key = (self.req.res.group, self.req.res.version, event_type)
        line = event.encoded.get(cache_key)
        if line is None:
            line = event.encoded[cache_key] = _dumps({"type": event_type,
                                                      "object": self.req.res.from_storage(event.obj)})
        return line

    def _encode_table(self, event_type: str, obj: JSON) -> bytes:
        assert self.req.table_columns is not None
        rendered = table.render_table(self.req.table_columns, [self.req.res.from_storage(obj)],
                                      include_object=self.req.include_object,
                                      resource_version=obj["metadata"]["resourceVersion"],
                                      no_headers=self._headers_sent)
        rendered["apiVersion"] = f"meta.k8s.io/{self.req.table_version}"
        # Only the first Table of a watch carries column definitions (kubectl reuses them).
        self._headers_sent = True
        return _dumps({"type": event_type, "object": rendered})

    def _bookmark(self, rv: str, *, initial_end: bool = False) -> bytes:
        metadata: JSON = {"resourceVersion": rv}
        if initial_end:
            metadata["annotations"] = {INITIAL_EVENTS_END: "true"}
        obj = {"kind": self.req.res.kind, "apiVersion": self.req.res.api_version, "metadata": metadata}
        return _dumps({"type": "BOOKMARK", "object": obj})

    async def serve(self, request: web.Request) -> web.StreamResponse:
        res = self.req.res
        watcher = self.store.watch(res.storage_key)
        try:
            # Nothing awaits between subscribing and reading the state, so no event falls in between.
            initial: list[bytes] = []
            replay: list[Event] = []
            snapshot_rv = self.store.resource_version
            start_rv = int(snapshot_rv)  # what the client knows once the initial events (or replay) are in
            rv = self.req.resource_version
            if self.req.send_initial_events or rv in (None, "", "0"):
                for obj in self.store.objects_of(res.storage_key, self.req.namespace):
                    if self._visible(obj):
                        initial.append(self._encode(ADDED, Event(0, res.storage_key, ADDED, obj)))
                if self.req.send_initial_events and self.req.bookmarks:
                    initial.append(self._bookmark(snapshot_rv, initial_end=True))
            else:
                try:
                    since = start_rv = int(rv)  # type: ignore[arg-type]
                except ValueError:
                    raise errors.bad_request(f'invalid resource version "{rv}"') from None
                try:
                    replay = self.store.since(res.storage_key, since)
                except errors.ApiError as gone:
                    initial.append(_dumps({"type": "ERROR", "object": gone.status()}))
                    return await self._respond_and_close(request, initial)

            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                               "Cache-Control": "no-cache, private"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                for line in initial:
                    await response.write(line)
                for event in replay:
                    kind = self._translate(event)
                    if kind is not None:
                        await response.write(self._encode(kind, event))
                await self._stream(response, watcher, start_rv, max((e.rv for e in replay), default=0))
            except ConnectionError:
                pass  # the client went away (or the server dropped it): nothing left to send
            return response
        finally:
            self.store.unwatch(watcher)

    async def _respond_and_close(self, request: web.Request, lines: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for line in lines:
            await response.write(line)
        await response.write_eof()
        return response

    def _next_bookmark(self, now: float, deadline: float | None) -> float | None:
        """When the next BOOKMARK is due, as the watch cache schedules them: every bookmark interval, and
        2 s before the deadline; None when neither comes before the watch ends."""
        if not self.req.bookmarks:
            return None
        due = now + self.bookmark_interval
        if deadline is not None:
            due = min(due, deadline - PRE_TIMEOUT_BOOKMARK)
        return due if due >= now else None

    async def _stream(self, response: web.StreamResponse, watcher: Watcher, start_rv: int, progress: int) -> None:
        """Live events. A BOOKMARK carries the resourceVersion of the resource's latest change (`progress`)
        and, as from kube's watch cache, only once that is past the watch's start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.req.timeout if self.req.timeout is not None else None
        bookmark_at = self._next_bookmark(loop.time(), deadline)
        while True:
            now = loop.time()
            remaining = None if deadline is None else deadline - now
            if remaining is not None and remaining <= 0:
                break
            wait = remaining
            if bookmark_at is not None:
                wait = max(0.0, bookmark_at - now) if wait is None else min(wait, max(0.0, bookmark_at - now))
            try:
                event = await watcher.next(wait)
            except TimeoutError:
                now = loop.time()
                if bookmark_at is not None and now >= bookmark_at:
                    if not watcher.pending() and progress > start_rv:
                        await response.write(self._bookmark(str(progress)))
                    bookmark_at = self._next_bookmark(now, deadline)
                continue
            if event is None:
                break  # the server closed this watch (stopping, going offline, client too slow)
            progress = max(progress, event.rv)
            kind = self._translate(event)
            if kind is not None:
                await response.write(self._encode(kind, event))
        await response.write_eof()
