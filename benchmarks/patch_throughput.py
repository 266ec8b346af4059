"""Status patches per second: the operator's API client (kubernetes.aio) vs. plain aiohttp on a loop.

Not part of `benchmarks/run`: it measures one design choice. The operator writes statuses through the
official client's asyncio flavour on its loop (it used the blocking client in a thread pool until
2026-12-01); in an event burst over many VMs every VM needs its own patch, so this rate bounds how fast a
burst drains, and plain aiohttp with the same number of connections is the floor of what a client costs.
Both clients use the operator's kubeconfig (on the real API its ServiceAccount token, straight to the API
server as in production); the VMs are created with the admin's.
Run: `PYTHONPATH=.:operator .venv/bin/python -m benchmarks.patch_throughput [N] [--api real|emulator]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from benchmarks.apis import KINDS, ApiChoice, Endpoint, vm_path
from benchmarks.common import create_vms, scratch_dir
from libvirt_operator.kube.client import KubeClient, load_api_client
from testbed import vm_manifest


async def _kube_client(kubeconfig: str, namespace: str, names: list[str], connections: int) -> float:
    client = KubeClient(await load_api_client(kubeconfig, connections=connections))
    began = time.monotonic()
    await asyncio.gather(*(client.patch_vm_status(namespace, n, {"reason": f"k{connections}"}) for n in names))
    elapsed = time.monotonic() - began
    await client.close()
    return elapsed


async def _aiohttp(endpoint: Endpoint, namespace: str, names: list[str], concurrency: int) -> float:
    limit = asyncio.Semaphore(concurrency)
    headers = {"Content-Type": "application/merge-patch+json"}
    async with endpoint.session(limit=concurrency) as session:
        async def one(name: str) -> None:
            url = f"{endpoint.url}{vm_path(namespace)}/{name}/status"
            async with limit, session.patch(url, data=json.dumps({"status": {"reason": f"a{concurrency}"}}),
                                            headers=headers) as resp:
                resp.raise_for_status()
                await resp.json()
        began = time.monotonic()
        await asyncio.gather(*(one(n) for n in names))
        return time.monotonic() - began


def main(count: int = 500, api_kind: str = "real") -> None:
    apis = ApiChoice(api_kind)
    print(f"API: {apis.describe()}")
    with scratch_dir("lvo-bench-patch-") as base, apis.phase(base, "patch-node") as api:
        names = [f"patch-{i:04d}" for i in range(count)]
        asyncio.run(create_vms(api.admin, [vm_manifest(n, "patch-node", namespace=api.namespace) for n in names]))
        operator = Endpoint.from_kubeconfig(api.kubeconfig)
        for connections in (1, 4, 16):
            rate = count / asyncio.run(_kube_client(str(api.kubeconfig), api.namespace, names, connections))
            print(f"kubernetes.aio, {connections:2d} connections: {rate:6.0f} patches/s")
        for concurrency in (1, 4, 16):
            rate = count / asyncio.run(_aiohttp(operator, api.namespace, names, concurrency))
            print(f"aiohttp,        {concurrency:2d} connections: {rate:6.0f} patches/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.patch_throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", nargs="?", type=int, default=500, help="VMs, one patch each per round")
    parser.add_argument("--api", choices=KINDS, default=os.environ.get("LVO_API", "real"),
                        help="the real control plane of hack/cluster.sh, or the emulator (default: $LVO_API or real)")
    args = parser.parse_args()
    main(args.count, args.api)
