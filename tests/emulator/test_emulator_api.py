"""The KubeEmulator Python API: lifecycle, kubeconfig, request counts, faults, debug endpoints, serve()."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes
import pytest
import yaml

from kube_emulator import KubeEmulator, serve
from kube_emulator.store import Store
from tests.emulator.conftest import FIXTURE_CRD, GROUP, PLURAL, VERSION, gadget

COLLECTION = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None,
               content_type: str = "application/json") -> tuple[int, Any, Any]:
    data = None if body is None else json.dumps(body)
    async with session.request(method, url, data=data, headers={"Content-Type": content_type}) as rsp:
        return rsp.status, await rsp.json(), rsp.headers


async def test_kubeconfig_points_at_the_server_and_is_written_atomically(tmp_path: Path) -> None:
    async with KubeEmulator(crd_paths=[FIXTURE_CRD]) as emulator:
        config = emulator.kubeconfig()
        assert config["current-context"] == "libvirt-operator-dev"
        assert config["clusters"][0]["cluster"]["server"] == emulator.url
        assert config["contexts"][0]["context"]["namespace"] == "default"
        path = tmp_path / "nested" / "kubeconfig"
        emulator.write_kubeconfig(path)
        assert yaml.safe_load(path.read_text()) == config
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert os.listdir(path.parent) == ["kubeconfig"]  # no temporary file left behind
        loaded = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(path), client_configuration=loaded)
        assert loaded.host == emulator.url


async def test_requests_are_counted_by_verb_and_resource() -> None:
    async with KubeEmulator(crd_paths=[FIXTURE_CRD]) as emulator, aiohttp.ClientSession() as session:
        url = emulator.url + COLLECTION
        await call(session, "POST", url, gadget("a"))
        await call(session, "GET", f"{url}/a")
        await call(session, "GET", url)
        await call(session, "PATCH", f"{url}/a/status", {"status": {"phase": "x"}}, "application/merge-patch+json")
        await call(session, "PATCH", f"{url}/a", {"spec": {"size": 2}}, "application/merge-patch+json")
        async with session.get(f"{url}?watch=1&timeoutSeconds=0.1") as rsp:
            await rsp.read()
        _, current, _ = await call(session, "GET", f"{url}/a")
        await call(session, "PUT", f"{url}/a", current)
        await call(session, "DELETE", f"{url}/a")
        assert emulator.requests == {
            ("create", "gadgets"): 1, ("get", "gadgets"): 2, ("list", "gadgets"): 1,
            ("patch", "gadgets/status"): 1, ("patch", "gadgets"): 1, ("watch", "gadgets"): 1,
            ("update", "gadgets"): 1, ("delete", "gadgets"): 1}
        async with session.get(emulator.url + "/_emulator/requests") as rsp:
            listed = await rsp.json()
        assert {"verb": "patch", "resource": "gadgets/status", "count": 1} in listed
        await call(session, "POST", emulator.url + "/_emulator/reset-counts", {})
        assert not emulator.requests


async def test_get_object_and_objects_return_copies() -> None:
    async with KubeEmulator(crd_paths=[FIXTURE_CRD]) as emulator, aiohttp.ClientSession() as session:
        await call(session, "POST", emulator.url + COLLECTION, gadget("a"))
        found = emulator.get_object(GROUP, VERSION, PLURAL, "default", "a")
        assert found is not None and found["spec"]["color"] == "red"
        found["spec"]["color"] = "changed"
        assert emulator.objects(GROUP, VERSION, PLURAL)[0]["spec"]["color"] == "red"
        assert emulator.get_object(GROUP, VERSION, PLURAL, "default", "missing") is None
        assert emulator.get_object("", "v1", "namespaces", None, "default") is not None


async def test_injected_faults_hit_the_matching_requests_only() -> None:
    async with KubeEmulator(crd_paths=[FIXTURE_CRD]) as emulator, aiohttp.ClientSession() as session:
        url = emulator.url + COLLECTION
        emulator.inject_fault(status=429, verb="create", resource="gadgets", count=2)
        for _ in range(2):
            status, body, headers = await call(session, "POST", url, gadget("a"))
            assert (status, body["reason"], headers["Retry-After"]) == (429, "TooManyRequests", "1")
            assert body["details"]["retryAfterSeconds"] == 1
        assert (await call(session, "POST", url, gadget("a")))[0] == 201
        await call(session, "POST", emulator.url + "/_emulator/faults",
                   {"status": 500, "verb": "patch", "resource": "gadgets/status"})
        assert (await call(session, "PATCH", f"{url}/a", {"spec": {"size": 2}},
                           "application/merge-patch+json"))[0] == 200
        status, body, _ = await call(session, "PATCH", f"{url}/a/status", {"status": {}},
                                     "application/merge-patch+json")
        assert (status, body["reason"], body["kind"]) == (500, "InternalError", "Status")
        emulator.inject_fault(status=409)
        assert (await call(session, "GET", f"{url}/a"))[1]["reason"] == "Conflict"


async def test_history_is_bounded() -> None:
    async with KubeEmulator(crd_paths=[FIXTURE_CRD], history_limit=5) as emulator, \
            aiohttp.ClientSession() as session:
        for index in range(20):
            await call(session, "POST", emulator.url + COLLECTION, gadget(f"g{index}"))
        assert emulator.store.history_size == 5


async def test_offline_refuses_connections_and_online_serves_the_same_store() -> None:
    async with KubeEmulator(crd_paths=[FIXTURE_CRD]) as emulator:
        async with aiohttp.ClientSession() as session:
            await call(session, "POST", emulator.url + COLLECTION, gadget("a"))
        port = emulator.port
        await emulator.go_offline()
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectionError):
                await call(session, "GET", emulator.url + COLLECTION)
        await emulator.go_online()
        assert emulator.port == port
        async with aiohttp.ClientSession() as session:
            status, body, _ = await call(session, "GET", emulator.url + COLLECTION)
        assert status == 200 and [o["metadata"]["name"] for o in body["items"]] == ["a"]


async def test_serve_writes_the_kubeconfig_then_calls_ready_and_runs_until_cancelled(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    started: asyncio.Future[KubeEmulator] = asyncio.get_running_loop().create_future()

    async def ready(emulator: KubeEmulator) -> None:
        assert kubeconfig.exists()
        started.set_result(emulator)

    task = asyncio.create_task(serve(kubeconfig=kubeconfig, crd_paths=[FIXTURE_CRD.parent / FIXTURE_CRD.name],
                                     ready=ready))
    emulator = await asyncio.wait_for(started, 10)
    async with aiohttp.ClientSession() as session:
        status, body, _ = await call(session, "GET", f"{emulator.url}/apis/{GROUP}/{VERSION}")
    assert status == 200 and body["groupVersion"] == f"{GROUP}/{VERSION}"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_watch_too_far_behind_is_closed_instead_of_growing() -> None:
    store = Store(history_limit=3)
    watcher = store.watch(("g", "things"))
    for index in range(5):
        store.commit(("g", "things"), "ADDED", {"metadata": {"name": f"t{index}"}})
    assert watcher.closed
    assert await watcher.next(1) is None
