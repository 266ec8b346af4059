"""Helpers shared by the scenarios: statistics, VMs over HTTP (apis.Endpoint), process readings, scratch space."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.apis import TOO_MANY_REQUESTS_TRIES, Endpoint, retry_after, vm_path
from libvirt_operator.api.constants import PLURAL
from testbed import libvirtd_answers

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
# Flags of the operator processes: no DEBUG logging (it costs CPU), no periodic full sync mid-run.
OPERATOR_FLAGS = ("--log-level", "INFO", "--sync-interval", "600")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("no samples: the scenario measured nothing")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def vm_writes(counts: Mapping[tuple[str, str], int]) -> int:
    """PATCH and PUT (`update`) requests on VirtualMachines, their /status included."""
    return sum(n for (verb, resource), n in counts.items()
               if verb in ("patch", "update") and resource.split("/")[0] == PLURAL)


def wait_until(predicate: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def settle(read: Callable[[], T], *, quiet: float, timeout: float, interval: float = 0.1) -> T:
    """Poll ``read`` until its value stays the same for ``quiet`` seconds (the operator has gone idle)."""
    deadline = time.monotonic() + timeout
    value = read()
    since = time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(interval)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def proc_status_kib(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def sample_rss_mib(pid: int, *, samples: int = 5, interval: float = 0.4) -> float:
    """The highest of ``samples`` VmRSS readings ``interval`` apart, in MiB (one reading can catch a dip)."""
    values = []
    for i in range(samples):
        if i:
            time.sleep(interval)
        values.append(proc_status_kib(pid, "VmRSS") / 1024)
    return max(values)


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks, every thread of the process) from the text of /proc/PID/stat.

    The fields are counted after the command name's closing parenthesis: the name may hold spaces."""
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5); fields[0] is field 3 (state)


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used so far (user + system, all its threads; not its children's)."""
    return stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / os.sysconf("SC_CLK_TCK")


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """One sample of a Prometheus text exposition (summed over the label sets that match)."""
    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
                found = True
    if not found:
        raise KeyError(f"metric {name} {labels or ''} not exposed")
    return total


def phase_counts(admin: Endpoint, namespace: str) -> Counter[str]:
    """Blocking: the namespace's VirtualMachines by status.phase, as the API server has them."""
    items = admin.call("GET", vm_path(namespace)).get("items") or []
    return Counter(str((item.get("status") or {}).get("phase", "")) for item in items)


async def create_vms(admin: Endpoint, manifests: Iterable[Mapping[str, Any]], *, concurrency: int = 16) -> list[str]:
    """POST each VirtualMachine; returns their uids in order."""
    limit = asyncio.Semaphore(concurrency)
    async with admin.session() as session:
        async def one(body: Mapping[str, Any]) -> str:
            async with limit:
                return await post_vm(session, admin, body)
        return list(await asyncio.gather(*(one(m) for m in manifests)))


async def request(session: aiohttp.ClientSession, method: str, url: str, *, data: bytes | None = None,
                  headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """One request, retried while the server answers 429 (apis.retry_after): (status, body)."""
    for attempt in range(TOO_MANY_REQUESTS_TRIES):
        async with session.request(method, url, data=data, headers=headers) as resp:
            body = await resp.read()
            if resp.status != 429 or attempt == TOO_MANY_REQUESTS_TRIES - 1:
                return resp.status, body
            wait = retry_after(resp.headers.get("Retry-After"))
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")


async def post_vm(session: aiohttp.ClientSession, admin: Endpoint, body: Mapping[str, Any]) -> str:
    """``session`` is one of ``admin.session()`` (it carries the credential)."""
    namespace = body["metadata"].get("namespace", "default")
    status, answer = await request(session, "POST", admin.url + vm_path(namespace), data=json.dumps(body).encode(),
                                   headers={"Content-Type": "application/json"})
    if status != 201:
        raise RuntimeError(f"creating {body['metadata']['name']}: HTTP {status}: {answer.decode(errors='replace')}")
    return str(json.loads(answer)["metadata"]["uid"])


async def delete_vms(admin: Endpoint, namespace: str, names: Iterable[str], *, concurrency: int = 16) -> None:
    """DELETE each VirtualMachine by name (one request each, not one deletecollection: a server-side
    collection delete of 10,000 objects outlives the request timeout); already gone is fine."""
    limit = asyncio.Semaphore(concurrency)
    async with admin.session(limit=concurrency) as session:
        async def one(name: str) -> None:
            async with limit:
                status, answer = await request(session, "DELETE", f"{admin.url}{vm_path(namespace)}/{name}")
            if status not in (200, 202, 404):
                raise RuntimeError(f"deleting {name}: HTTP {status}: {answer.decode(errors='replace')}")
        await asyncio.gather(*(one(n) for n in names))


async def patch_vm_status(session: aiohttp.ClientSession, endpoint: Endpoint, namespace: str, name: str,
                          body: bytes) -> None:
    """One merge patch of a VM's status subresource; ``body`` is the JSON document as sent."""
    status, answer = await request(session, "PATCH", f"{endpoint.url}{vm_path(namespace)}/{name}/status", data=body,
                                   headers={"Content-Type": "application/merge-patch+json"})
    if status != 200:
        raise RuntimeError(f"patching the status of {name}: HTTP {status}: {answer.decode(errors='replace')}")


async def list_vms(session: aiohttp.ClientSession, admin: Endpoint, namespace: str) -> dict[str, Any]:
    async with session.get(admin.url + vm_path(namespace)) as resp:
        resp.raise_for_status()
        result: dict[str, Any] = await resp.json()
        return result


class PhaseWatcher:
    """Watches a namespace's VirtualMachines; records when each name is first seen in the wanted phase
    (time.monotonic). Its session must be one of ``admin.session()``."""

    def __init__(self, admin: Endpoint, namespace: str, phase: str) -> None:
        self.admin = admin
        self.namespace = namespace
        self.phase = phase
        self.seen: dict[str, float] = {}
        self.seen_wall: dict[str, float] = {}  # time.time() of the same moment
        self.objects: dict[str, Mapping[str, Any]] = {}  # the object as first seen in the phase
        self.failed: dict[str, str] = {}  # name -> status.message of VMs that went Failed instead
        self._started = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession) -> None:
        listing = await list_vms(session, self.admin, self.namespace)
        for item in listing.get("items") or []:
            self._note(item)
        rv = listing["metadata"]["resourceVersion"]
        params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "3600"}
        async with session.get(self.admin.url + vm_path(self.namespace), params=params,
                               timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
            resp.raise_for_status()
            self._started.set()
            async for line in resp.content:
                if line.strip():
                    event = json.loads(line)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._note(event["object"])

    async def started(self) -> None:
        await self._started.wait()

    def _note(self, obj: Mapping[str, Any]) -> None:
        name = str(obj["metadata"]["name"])
        status = obj.get("status") or {}
        if name not in self.seen and status.get("phase") == self.phase:
            self.seen[name] = time.monotonic()
            self.seen_wall[name] = time.time()
            self.objects[name] = obj
        elif status.get("phase") == "Failed":
            self.failed[name] = str(status.get("message", ""))


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A directory QEMU (user libvirt-qemu) can traverse: under /var/tmp, mode 0755; removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    base.chmod(0o755)
    for sub in ("disks", "images"):
        (base / sub).mkdir()
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def ensure_libvirtd() -> None:
    """qemu:///system must answer; hack/libvirtd.sh starts it (idempotently) when it does not."""
    if libvirtd_answers():
        return
    print("libvirtd does not answer at qemu:///system: running hack/libvirtd.sh", flush=True)
    subprocess.run(["bash", str(REPO / "hack" / "libvirtd.sh")], check=False)
    if not libvirtd_answers():
        raise SystemExit("benchmarks: libvirtd does not answer at qemu:///system (see hack/libvirtd.sh)")
