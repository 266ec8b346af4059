"""The VirtualMachine informer: watch from a listing's resourceVersion, relist when that is too old.

client-go's reflector for one resource. The runtime's start-up listing (node-scoped by the field selector
``spec.nodeName=<node>``: kube/node_scope.py) gives the first resourceVersion; from there one watch request
after another (each ended by the server after ``server_timeout``), resumed from the last version seen, which
bookmarks keep current while nothing of this node changes. A 410 Gone (the version left the watch cache's
window, as after a long outage) is answered with a relist: every VM not older than the last version seen,
served from the watch cache; the runtime then learns which VMs left the cache meanwhile. Other failures
(the API server away, a reset connection, a 5xx) are retried from the same version with a backoff.

Why the operator's own watch and not kopf's (kopf keeps login, start-up, clean-up, probes and the
VirtualMachineMigration watch): in an event burst, every status patch comes back as a watch event of our
own write. kopf processes each through its whole handler machinery (causes, loggers, a diff-base, handler
invocation) before the runtime sees it is an echo: a fifth of the operator's CPU per lifecycle event,
profiled, which on a node whose API server shares the cores is throughput lost. Here an echo costs a JSON
decode and a resourceVersion comparison. Not ``kubernetes.aio.watch.Watch``: it encodes and decodes every
object again (into the declared return type, a plain object for custom resources), and its 410 handling
resumes from the expired version instead of relisting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from libvirt_operator.kube.client import KubeClient, KubeError

logger = logging.getLogger(__name__)

BACKOFF = (0.5, 10.0)  # first and longest wait before a failed watch or relist is tried again


class Expired(Exception):
    """The watch's resourceVersion is too old for the API server (410 Gone): relist."""


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict[str, Any]

    @property
    def resource_version(self) -> str:
        return str((self.object.get("metadata") or {}).get("resourceVersion") or "")


_MODIFIED = b'{"type":"MODIFIED",'
_UID = re.compile(rb'"uid":"([^"\\]*)"')
_VERSION = re.compile(rb'"resourceVersion":"([0-9]+)"')


def modified_version(line: bytes) -> tuple[str, str] | None:
    """Pure: (uid, resourceVersion) of a MODIFIED event's object, read off the raw line without decoding
    it, or None when the line does not tell them unambiguously. In JSON text a quote inside a string value
    is escaped, so ``"uid":"`` can only be a key; the object's metadata always has both keys, so a line
    naming each exactly once names the object's own (a label or annotation keyed ``uid`` or
    ``resourceVersion`` makes it two: then the line is decoded as any other)."""
    if not line.startswith(_MODIFIED):
        return None
    uids, versions = _UID.findall(line), _VERSION.findall(line)
    if len(uids) != 1 or len(versions) != 1:
        return None
    return uids[0].decode(), versions[0].decode()


def read_event(line: bytes) -> WatchEvent | None:
    """Pure: one line of a watch response. None for a blank line; ``Expired`` for the in-stream 410 the
    watch cache sends when asked for a version it no longer has; ``KubeError`` for any other ERROR event
    or a line that is not an event (the watch is then resumed from the last version seen)."""
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise KubeError(f"watch: not a JSON event: {line[:200]!r}") from exc
    kind, obj = (event.get("type"), event.get("object")) if isinstance(event, dict) else (None, None)
    if not isinstance(kind, str) or not isinstance(obj, dict):
        raise KubeError(f"watch: not an event: {line[:200]!r}")
    if kind == "ERROR":
        code, message = obj.get("code"), obj.get("message", "")
        if code == 410:
            raise Expired(message)
        raise KubeError(f"watch: ERROR event: {code} {obj.get('reason', '')}: {message}",
                        code if isinstance(code, int) else None)
    return WatchEvent(kind, obj)


def vanished(held: Mapping[Any, str], listed: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Pure: after a relist, the keys held in the cache (key -> uid) whose object the listing lacks, or
    lists with another uid (deleted and created again): the watch events about them were lost with the
    expired version, so each is asked about as a DELETED would be."""
    current = {(str((o.get("metadata") or {}).get("namespace", "")), str((o.get("metadata") or {}).get("name", ""))):
               str((o.get("metadata") or {}).get("uid", "")) for o in listed}
    return [key for key, uid in held.items() if current.get(key) != uid]


@dataclass(frozen=True)
class WatchSink:
    """Where the informer's news goes (the runtime): an event (type None: listed by a relist), and the end
    of a relist with every object it listed."""

    event: Callable[[str | None, Mapping[str, Any]], None]
    relisted: Callable[[list[dict[str, Any]]], None]
    # Whether the object with this uid at this resourceVersion is held already (the echo of our own
    # write, whose answer brought the same object): then the line is not decoded at all. In an event
    # burst every status patch comes back so; decoding it was about 4 % of the operator's loop, profiled.
    holds: Callable[[str, str], bool] = lambda _uid, _version: False


class VMInformer:
    def __init__(self, kube: KubeClient, sink: WatchSink, *, namespace: str | None,
                 selector: Callable[[], str | None], server_timeout: int, client_timeout: float,
                 on_relist: Callable[[str], None] | None = None) -> None:
        self.kube = kube
        self.sink = sink
        self.namespace = namespace
        self.selector = selector  # read at every request: the runtime may fall back to no selector
        self.server_timeout = server_timeout
        self.client_timeout = client_timeout
        self.on_relist = on_relist  # metrics hook: why (expired)
        self.resource_version = ""

    async def run(self, resource_version: str) -> None:
        """Forever (cancel to stop), from the version of the listing the caller already holds."""
        self.resource_version = resource_version
        delay = BACKOFF[0]
        expired_last = False
        while True:
            try:
                began = time.monotonic()
                await self._watch_once()
                expired_last = False
                if time.monotonic() - began < BACKOFF[0]:  # ended at once: a server or proxy not streaming
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF[1])
                else:
                    delay = BACKOFF[0]
            except Expired as exc:
                logger.info("VirtualMachine watch from resourceVersion %s: expired (%s); relisting",
                            self.resource_version, exc)
                if self.on_relist is not None:
                    self.on_relist("expired")
                if expired_last:  # expired again at once (a proxy answering every watch 410): back off
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF[1])
                try:
                    await self._relist(consistent=False)
                except Expired:
                    await self._relist(consistent=True)  # not even the watch cache has it: a consistent list
                expired_last = True
                continue
            except KubeError as exc:
                expired_last = False
                logger.warning("VirtualMachine watch failed (%s); resuming from resourceVersion %s in %.1fs",
                               exc, self.resource_version, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])

    async def _watch_once(self) -> None:
        lines = self.kube.watch_vms(self.namespace, resource_version=self.resource_version,
                                    field_selector=self.selector(), server_timeout=self.server_timeout,
                                    client_timeout=self.client_timeout)
        try:
            async with contextlib.aclosing(lines):  # the response is released however this ends
                async for line in lines:
                    echo = modified_version(line)
                    if echo is not None and self.sink.holds(*echo):
                        self.resource_version = echo[1]
                        continue
                    event = read_event(line)
                    if event is None:
                        continue
                    if event.type != "BOOKMARK":
                        self.sink.event(event.type, event.object)
                    version = event.resource_version
                    if version:
                        self.resource_version = version
        except KubeError as exc:
            if exc.status == 410:  # the answer to the request itself (a proxy's; the watch cache's is in-stream)
                raise Expired(str(exc)) from exc
            raise

    async def _relist(self, *, consistent: bool) -> None:
        """Every VM (of this node) again; not older than the last version seen unless ``consistent``."""
        delay = BACKOFF[0]
        while True:
            try:
                items, version = await self.kube.list_vms_at(
                    self.namespace, field_selector=self.selector(),
                    resource_version=None if consistent else self.resource_version or None)
                break
            except KubeError as exc:
                if exc.status == 410 and not consistent:
                    raise Expired(str(exc)) from exc
                logger.warning("cannot relist VirtualMachines (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])
        for item in items:
            self.sink.event(None, item)
        self.sink.relisted(items)
        self.resource_version = version
