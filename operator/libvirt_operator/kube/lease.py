"""A per-node Lease (coordination.k8s.io/v1) so that only one operator process acts for a node.

Two processes for the same node (a misconfigured DaemonSet, the overlap of a rolling update) would
otherwise both define, start and destroy the same domains. The semantics follow client-go's leader
election: a lease is free when absent, released (no holder) or expired (renewTime +
leaseDurationSeconds in the past); every write carries the resourceVersion that was read, so of two
contenders exactly one wins each round (the other gets 409 and reads again).

Expiry is judged from the lease's renewTime against the local clock. Contenders for one node run on
that node, so they share a clock; a lease of a crashed process is taken over at once on restart
instead of after a further full duration (client-go's observed-time rule).

Calls go through the operator's asyncio API client (``kubernetes.aio``, the pool of ``kube/client.py``),
so the loop never waits on the network, and each carries a timeout that the renewal deadline bounds.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import kubernetes.aio.client

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
API_VERSION = "coordination.k8s.io/v1"
NAME_PREFIX = "libvirt-operator-"
# A released lease lasts one second (client-go's release), so a successor may take it at once.
RELEASED_DURATION = 1
_FRACTION = re.compile(r"(\.\d{6})\d+")  # MicroTime has 6 digits; a longer fraction is cut, not refused


def default_identity() -> str:
    """Unique per process, readable by a human: which pod (hostname) and which process holds the lease."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str
    duration: float = 15.0  # leaseDurationSeconds (rounded up to whole seconds in the object)
    renew_every: float = 5.0
    retry_every: float = 2.0

    def __post_init__(self) -> None:
        for field_name in ("duration", "renew_every", "retry_every"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"LeaseConfig.{field_name} must be positive, got {getattr(self, field_name)!r}")
        if self.renew_every >= self.duration:
            raise ValueError(f"LeaseConfig.renew_every ({self.renew_every}) must be shorter than "
                             f"LeaseConfig.duration ({self.duration}), or the lease expires between renewals")
        if not self.name or not self.namespace or not self.identity:
            raise ValueError("LeaseConfig.name, .namespace and .identity must not be empty")

    @classmethod
    def for_node(cls, node: str, *, namespace: str | None = None, identity: str | None = None,
                 duration: float = 15.0, renew_every: float = 5.0, retry_every: float = 2.0) -> LeaseConfig:
        """The lease of one node: namespace from POD_NAMESPACE (the downward API) unless given."""
        return cls(name=f"{NAME_PREFIX}{node}",
                   namespace=namespace or os.environ.get("POD_NAMESPACE") or "default",
                   identity=identity or default_identity(),
                   duration=duration, renew_every=renew_every, retry_every=retry_every)


def format_micro_time(moment: datetime.datetime) -> str:
    """RFC3339 with microseconds in UTC, as Kubernetes writes MicroTime."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text: object) -> datetime.datetime | None:
    """A MicroTime (or plain RFC3339 Time) as an aware datetime; None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(_FRACTION.sub(r"\1", text.strip()))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class NodeLease:
    """Acquire, hold (renew) and release one Lease for this process's identity."""

    def __init__(self, api_client: kubernetes.aio.client.ApiClient, config: LeaseConfig) -> None:
        self.config = config
        self._api = kubernetes.aio.client.CoordinationV1Api(api_client)
        self.holder: str | None = None  # the holder last seen in the lease
        self.acquired = False
        self.transitions = 0  # leaseTransitions last seen
        self._last_renew: float | None = None  # monotonic time of the renewTime we last wrote successfully
        self._logged_holder: str | None = None

    # --- public ------------------------------------------------------------------------------------

    async def acquire(self) -> None:
        """Return once this identity holds the lease; until then retry every ``retry_every`` seconds."""
        cfg = self.config
        while True:
            try:
                if await self._try_acquire():
                    logger.info("acquired lease %s/%s as %s (transitions: %d)", cfg.namespace, cfg.name,
                                cfg.identity, self.transitions)
                    return
            except LeaseApiError as exc:
                if exc.status != 409:  # 409: another contender wrote first; read again next round
                    logger.warning("lease %s/%s: %s %s; retrying", cfg.namespace, cfg.name, exc.status, exc.reason)
            except Exception as exc:  # connection refused, resets, timeouts: an outage
                logger.warning("lease %s/%s: %r; retrying", cfg.namespace, cfg.name, exc)
            await asyncio.sleep(cfg.retry_every)

    async def hold(self, on_lost: Callable[[], None]) -> None:
        """Renew every ``renew_every`` seconds; call ``on_lost()`` once and return when the lease is lost.

        Lost means: another identity is in the lease, or no renewal succeeded within ``duration`` of the
        last successful one (by then a contender may rightfully have taken over). Cancel the task to
        stop renewing without losing (e.g. before ``release()``).
        """
        cfg = self.config
        if not self.acquired or self._last_renew is None:
            raise RuntimeError(f"hold() of lease {cfg.namespace}/{cfg.name} before acquire()")
        delay = cfg.renew_every
        while True:
            deadline = self._last_renew + cfg.duration
            await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._lose(on_lost, f"not renewed within {cfg.duration:g}s")
                return
            try:
                # The deadline bounds the call too: a hanging request must not outlive our claim.
                # asyncio.timeout, not wait_for: on 3.11 wait_for returns the call's result instead of
                # raising when a cancel lands as the call completes, and hold() would renew forever.
                async with asyncio.timeout(remaining):
                    still_ours = await self._try_renew(remaining)
            except LeaseApiError as exc:
                if exc.status != 409:
                    logger.warning("renewing lease %s/%s: %s %s", cfg.namespace, cfg.name, exc.status, exc.reason)
                delay = min(cfg.retry_every, cfg.renew_every)  # 409: read again soon
                continue
            except TimeoutError:
                continue  # the loop head sees the deadline passed
            except Exception as exc:  # connection refused, resets, timeouts: retry until the deadline
                logger.warning("renewing lease %s/%s: %r", cfg.namespace, cfg.name, exc)
                delay = min(cfg.retry_every, cfg.renew_every)
                continue
            if not still_ours:
                self._lose(on_lost, f"now held by {self.holder or 'nobody'}")
                return
            delay = cfg.renew_every

    async def release(self) -> None:
        """Hand the lease over at once (clean shutdown): only if it is still ours; never raises API errors.

        Cancel the ``hold()`` task first, or it would see the released lease and call ``on_lost()``.
        """
        cfg = self.config
        if not self.acquired:
            return
        self.acquired = False
        try:
            lease = await self._read()
            if lease is None or _spec(lease).get("holderIdentity") != cfg.identity:
                return
            now = format_micro_time(_now())
            spec = _spec(lease)
            spec["holderIdentity"] = None
            spec["leaseDurationSeconds"] = RELEASED_DURATION
            spec["acquireTime"] = now
            spec["renewTime"] = now
            lease["spec"] = spec
            written = await self._replace(lease)
            self._observe(written)
            logger.info("released lease %s/%s", cfg.namespace, cfg.name)
        except Exception as exc:  # shutting down anyway; the lease expires on its own
            logger.warning("could not release lease %s/%s: %r", cfg.namespace, cfg.name, exc)

    # --- one round ---------------------------------------------------------------------------------

    async def _try_acquire(self) -> bool:
        cfg = self.config
        lease = await self._read()
        started = time.monotonic()
        now = _now()
        if lease is None:
            written = await self._create(self._new_lease(now))
            self._took(written, started)
            return True
        self._observe(lease)
        spec = _spec(lease)
        holder = spec.get("holderIdentity") or None
        if holder is not None and holder != cfg.identity and not _expired(spec, now):
            if holder != self._logged_holder:  # once per holder, not once per retry
                logger.info("waiting for lease %s/%s held by %s", cfg.namespace, cfg.name, holder)
                self._logged_holder = holder
            return False
        stamp = format_micro_time(now)
        if holder != cfg.identity:
            spec["leaseTransitions"] = _int(spec.get("leaseTransitions")) + 1
            spec["acquireTime"] = stamp
        spec.update(holderIdentity=cfg.identity, leaseDurationSeconds=self._duration_seconds, renewTime=stamp)
        lease["spec"] = spec
        written = await self._replace(lease)  # carries the resourceVersion read: 409 if anyone wrote since
        self._took(written, started)
        return True

    async def _try_renew(self, request_timeout: float) -> bool:
        """One renewal; False when the lease turned out to be someone else's (or gone)."""
        cfg = self.config
        lease = await self._read(request_timeout)
        started = time.monotonic()
        if lease is None:
            self.holder = None
            return False
        self._observe(lease)
        spec = _spec(lease)
        if spec.get("holderIdentity") != cfg.identity:
            return False
        spec.update(renewTime=format_micro_time(_now()), leaseDurationSeconds=self._duration_seconds)
        lease["spec"] = spec
        written = await self._replace(lease, max(0.1, request_timeout - (time.monotonic() - started)))
        self._observe(written)
        self._last_renew = started
        return True

    def _took(self, written: JSON, started: float) -> None:
        self._observe(written)
        self.acquired = True
        self._last_renew = started
        self._logged_holder = None

    def _lose(self, on_lost: Callable[[], None], why: str) -> None:
        cfg = self.config
        self.acquired = False
        logger.warning("lost lease %s/%s: %s", cfg.namespace, cfg.name, why)
        on_lost()

    def _observe(self, lease: JSON) -> None:
        spec = _spec(lease)
        self.holder = spec.get("holderIdentity") or None
        self.transitions = _int(spec.get("leaseTransitions"))

    def _new_lease(self, now: datetime.datetime) -> JSON:
        stamp = format_micro_time(now)
        return {
            "apiVersion": API_VERSION,
            "kind": "Lease",
            "metadata": {"name": self.config.name, "namespace": self.config.namespace},
            "spec": {
                "holderIdentity": self.config.identity,
                "leaseDurationSeconds": self._duration_seconds,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        }

    @property
    def _duration_seconds(self) -> int:
        return max(1, math.ceil(self.config.duration))  # the API field is whole seconds

    # --- API calls ----------------------------------------------------------------------------------

    def _timeout(self, request_timeout: float | None) -> float:
        return request_timeout if request_timeout is not None else self.config.duration

    async def _read(self, request_timeout: float | None = None) -> JSON | None:
        cfg = self.config
        try:
            # Raw JSON, not the generated model: the times stay MicroTime strings, the object round-trips.
            return await _answer(self._api.read_namespaced_lease_without_preload_content(
                cfg.name, cfg.namespace, _request_timeout=self._timeout(request_timeout)))
        except LeaseApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def _create(self, body: JSON) -> JSON:
        cfg = self.config
        return await _answer(self._api.create_namespaced_lease_without_preload_content(
            cfg.namespace, body, _request_timeout=self._timeout(None)))

    async def _replace(self, body: JSON, request_timeout: float | None = None) -> JSON:
        cfg = self.config
        return await _answer(self._api.replace_namespaced_lease_without_preload_content(
            cfg.name, cfg.namespace, body, _request_timeout=self._timeout(request_timeout)))


class LeaseApiError(Exception):
    """The API server answered a Lease request with an error status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


async def _answer(request: Awaitable[aiohttp.ClientResponse]) -> JSON:
    """The Lease in a 2xx answer; LeaseApiError otherwise (calls without preloading check no status)."""
    response = await request
    try:
        body = await response.read()
    finally:
        response.release()
    if not 200 <= response.status <= 299:
        raise LeaseApiError(response.status, str(response.reason or ""))
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError(f"a Lease must be a JSON object, got {type(data).__name__}")
    return data


def _spec(lease: JSON) -> JSON:
    spec = lease.get("spec")
    return dict(spec) if isinstance(spec, dict) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _expired(spec: JSON, now: datetime.datetime) -> bool:
    """renewTime (else acquireTime) + leaseDurationSeconds is past; a lease without times is free."""
    renewed = parse_micro_time(spec.get("renewTime")) or parse_micro_time(spec.get("acquireTime"))
    if renewed is None:
        return True
    duration = _int(spec.get("leaseDurationSeconds"))
    return renewed + datetime.timedelta(seconds=duration) < now
