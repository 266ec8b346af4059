"""The API server's raw status-patch throughput, measured right after the event burst on the same VMs.

What the operator's drain is compared with: the same API server in the same run, the same VMs, the same
identity (the operator's kubeconfig: on the real API its ServiceAccount token, straight to the API server),
as many requests in flight as the operator allows itself (its `--workers`, which also bounds its client's
connection pool), and patches of the size the operator writes for a lifecycle event. Nothing else: aiohttp
on a loop of its own in this process, each request sent as soon as one of the ``concurrency`` slots frees.

The payload is what the operator sends for a lifecycle event (`_write_status`: only the fields that
differ), rendered from the status it last wrote, in the burst's two shapes: round one like a suspend's
patch (phase, powerState, reason, lastEvent, conditions), round two like a resume's, which carries no
lastEvent (as seen on 2026-12-01: the burst's resume patches had the other four fields only). Each patch
changes a time the operator does not compare (round one lastEvent.time, round two the conditions'
lastTransitionTime; same format, same length), so every patch is written to etcd (a no-op patch would skip
the write) and an operator started afterwards has nothing to correct. The API server's own request-size
histogram (scale.py: `status_patch_bytes_operator`) checks the rendering against what the operator sent.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.apis import Endpoint, PhaseApi, vm_path
from benchmarks.common import patch_vm_status
from libvirt_operator.api.status import event_time

# What a lifecycle event changes in a VM's status, in the operator's order (handlers/vm.py _observed_status).
EVENT_FIELDS = ("phase", "powerState", "reason", "lastEvent", "conditions")
SECONDS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # conditions' lastTransitionTime (api/status.py now_iso)


@dataclass
class RawPatchResult:
    patches: int
    seconds: float  # first request sent to last response read
    concurrency: int
    mean_bytes: float  # request body size

    @property
    def per_s(self) -> float:
        return self.patches / self.seconds


def event_patch(status: Mapping[str, Any], moment: float, *, last_event: bool) -> dict[str, Any]:
    """The merge patch of one lifecycle event, as the operator sends it: ``{"status": {...}}`` with the
    fields an event changes, taken from ``status``; with ``last_event`` its lastEvent with the time
    ``moment``, without it the conditions' lastTransitionTime moved to ``moment`` (a second earlier where
    that is what they say already, so that the patch changes the object)."""
    fields: dict[str, Any] = {k: status[k] for k in EVENT_FIELDS if k in status}
    if last_event and isinstance(fields.get("lastEvent"), Mapping):
        fields["lastEvent"] = {**fields["lastEvent"], "time": event_time(moment)}
    else:
        fields.pop("lastEvent", None)
        fields["conditions"] = [_moved(c, moment) for c in fields.get("conditions") or []]
    return {"status": {k: fields[k] for k in EVENT_FIELDS if k in fields}}


def _moved(condition: Mapping[str, Any], moment: float) -> dict[str, Any]:
    if "lastTransitionTime" not in condition:
        return dict(condition)
    stamp = _seconds(moment)
    if stamp == condition["lastTransitionTime"]:
        stamp = _seconds(moment - 1)
    return {**condition, "lastTransitionTime": stamp}


def _seconds(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime(SECONDS_FORMAT)


def encode(patch: Mapping[str, Any]) -> bytes:
    # json.dumps' default separators, as the kubernetes clients serialize a body.
    return json.dumps(patch).encode()


def run(api: PhaseApi, names: Sequence[str], *, concurrency: int, rounds: int = 2) -> RawPatchResult:
    """``rounds`` patches of every VM in ``names`` (the burst's two phases: one patch per VM each), at most
    ``concurrency`` in flight, with the operator's identity."""
    statuses = {str(item["metadata"]["name"]): item.get("status") or {}
                for item in api.admin.call("GET", vm_path(api.namespace)).get("items") or []}
    missing = [n for n in names if not statuses.get(n)]
    if missing:
        raise RuntimeError(f"{len(missing)} VMs have no status to patch: {missing[:3]}")
    bodies = [(n, encode(event_patch(statuses[n], time.time(), last_event=r % 2 == 0)))
              for r in range(rounds) for n in names]
    operator = Endpoint.from_kubeconfig(api.kubeconfig)
    seconds = asyncio.run(_patch_all(operator, api.namespace, bodies, concurrency))
    return RawPatchResult(len(bodies), seconds, concurrency, sum(len(b) for _n, b in bodies) / len(bodies))


async def _patch_all(endpoint: Endpoint, namespace: str, bodies: Sequence[tuple[str, bytes]],
                     concurrency: int) -> float:
    limit = asyncio.Semaphore(concurrency)
    async with endpoint.session(limit=concurrency) as session:
        async def one(name: str, body: bytes) -> None:
            async with limit:
                await patch_vm_status(session, endpoint, namespace, name, body)

        async def connect(name: str) -> None:
            async with session.get(f"{endpoint.url}{vm_path(namespace)}/{name}") as resp:
                await resp.read()

        # The operator's connections are open when a burst comes: so are these (TLS handshakes untimed).
        await asyncio.gather(*(connect(n) for n, _b in bodies[:concurrency]))
        began = time.monotonic()
        await asyncio.gather(*(one(n, b) for n, b in bodies))
        return time.monotonic() - began
