"""Status patches per second against the API emulator: the kubernetes client in threads vs. aiohttp on a loop.

Not part of `benchmarks/run`: it measures one design choice. The operator writes statuses through the
kubernetes client in a thread pool; in an event burst over many VMs every VM needs its own patch, so
this rate bounds how fast a burst drains. Run: `PYTHONPATH=.:operator .venv/bin/python -m
benchmarks.patch_throughput [N]`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp

from benchmarks.common import create_vms, scratch_dir
from libvirt_operator.api.constants import GROUP, PLURAL, VERSION
from libvirt_operator.kube.client import KubeClient, load_api_client
from testbed import EmulatorApi as ApiServer
from testbed import vm_manifest


async def _kube_client(api: ApiServer, names: list[str], workers: int) -> float:
    client = KubeClient(load_api_client(str(api.kubeconfig)), workers=workers)
    began = time.monotonic()
    await asyncio.gather(*(client.patch_vm_status("default", n, {"reason": f"k{workers}"}) for n in names))
    elapsed = time.monotonic() - began
    client.close()
    return elapsed


async def _aiohttp(api: ApiServer, names: list[str], concurrency: int) -> float:
    limit = asyncio.Semaphore(concurrency)
    headers = {"Content-Type": "application/merge-patch+json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(name: str) -> None:
            url = f"{api.url}/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/{name}/status"
            async with limit, session.patch(url, data=json.dumps({"status": {"reason": f"a{concurrency}"}}),
                                            headers=headers) as resp:
                resp.raise_for_status()
                await resp.json()
        began = time.monotonic()
        await asyncio.gather(*(one(n) for n in names))
        return time.monotonic() - began


def main(count: int = 500) -> None:
    with scratch_dir("lvo-bench-patch-") as base:
        api = ApiServer(base)
        api.start()
        try:
            names = [f"patch-{i:04d}" for i in range(count)]
            asyncio.run(create_vms(api.url, [vm_manifest(n, "patch-node") for n in names]))
            for workers in (4, 8, 16):
                rate = count / asyncio.run(_kube_client(api, names, workers))
                print(f"kubernetes client, {workers:2d} threads: {rate:6.0f} patches/s")
            for concurrency in (1, 4, 16):
                rate = count / asyncio.run(_aiohttp(api, names, concurrency))
                print(f"aiohttp, {concurrency:2d} concurrent:      {rate:6.0f} patches/s")
        finally:
            api.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
