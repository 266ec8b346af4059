"""The operator's own Kubernetes API writes (outside kopf's handler machinery).

Uses the official ``kubernetes`` client, whose calls block, in a small thread pool so the asyncio loop
never waits on the network. Errors leave as ``KubeError`` with the HTTP status, so callers can tell a
conflict (409) or a vanished object (404) from an outage (retry with backoff).

Every answer is read as plain JSON (``_preload_content=False``), never through the client's models: those
(pydantic since kubernetes 36) refuse objects the API server accepts, e.g. a Node without a kubelet, whose
``status.nodeInfo`` is empty or partial. A write that landed then looked like a failure and was retried
forever. Plain JSON is also what the callers work with.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import json
import logging
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kubernetes
from kubernetes.client.rest import ApiException

from libvirt_operator.api.constants import GROUP, KIND, PLURAL, VERSION

logger = logging.getLogger(__name__)

T = TypeVar("T")
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class KubeError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def load_api_client(kubeconfig: str | None) -> kubernetes.client.ApiClient:
    """kubeconfig file when given, else in-cluster config (the DaemonSet case)."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    configuration.retries = 0  # our own retry policy applies (backoff in the work queue)
    return kubernetes.client.ApiClient(configuration)


class KubeClient:
    def __init__(self, api_client: kubernetes.client.ApiClient, *, workers: int = 8,
                 request_timeout: float = 15.0, component: str = "libvirt-operator") -> None:
        self.api_client = api_client
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.coordination = kubernetes.client.CoordinationV1Api(api_client)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                               thread_name_prefix="kube-call")
        self._timeout = request_timeout
        self.component = component
        self.host = socket.gethostname()
        self.on_request: Callable[[str, str, bool], None] | None = None  # metrics hook: verb, resource, ok

    async def _call(self, verb: str, resource: str, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, fn)
        except ApiException as exc:
            if self.on_request is not None:
                self.on_request(verb, resource, False)
            raise KubeError(f"{verb} {resource}: {exc.status} {exc.reason}: {_message(exc)}", exc.status) from exc
        except Exception as exc:  # connection refused, timeouts, TLS: an outage
            if self.on_request is not None:
                self.on_request(verb, resource, False)
            raise KubeError(f"{verb} {resource}: {exc}") from exc
        if self.on_request is not None:
            self.on_request(verb, resource, True)
        return result

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()

    # --- VirtualMachines -------------------------------------------------------------------------

    async def list_vms(self, namespace: str | None = None, *,
                       field_selector: str | None = None) -> list[dict[str, Any]]:
        options: dict[str, Any] = {"field_selector": field_selector} if field_selector else {}

        def fn() -> Any:
            if namespace:
                return self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, _request_timeout=self._timeout, _preload_content=False,
                    **options)
            return self.custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _request_timeout=self._timeout, _preload_content=False, **options)
        result = await self._call("list", PLURAL, lambda: _decode(fn()))
        return list(result.get("items") or [])

    async def get_vm(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._call("get", PLURAL, lambda: _decode(self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self._timeout, _preload_content=False)))

    async def patch_vm_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        body = {"status": dict(status)}
        return await self._call("patch", f"{PLURAL}/status", lambda: _decode(
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _content_type=MERGE,
                _request_timeout=self._timeout, _preload_content=False)))

    async def json_patch_vm(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return await self._call("patch", PLURAL, lambda: _decode(self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, ops, _content_type=JSON_PATCH,
            _request_timeout=self._timeout, _preload_content=False)))

    async def add_finalizer(self, vm: Mapping[str, Any], finalizer: str) -> dict[str, Any]:
        meta = vm["metadata"]
        ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion",
                                      "value": meta.get("resourceVersion")}]
        if meta.get("finalizers"):
            ops.append({"op": "add", "path": "/metadata/finalizers/-", "value": finalizer})
        else:
            ops.append({"op": "add", "path": "/metadata/finalizers", "value": [finalizer]})
        return await self.json_patch_vm(meta["namespace"], meta["name"], ops)

    async def remove_finalizer(self, vm: Mapping[str, Any], finalizer: str) -> dict[str, Any] | None:
        meta = vm["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if finalizer not in finalizers:
            return dict(vm)
        index = finalizers.index(finalizer)
        ops = [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        try:
            return await self.json_patch_vm(meta["namespace"], meta["name"], ops)
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    # --- Events ----------------------------------------------------------------------------------

    async def post_event(self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str) -> None:
        meta = involved.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        now = datetime.datetime.now(datetime.UTC)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta.get('name', 'object')}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": involved.get("kind", KIND),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component,
            "reportingInstance": self.host,
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        await self._call("create", "events", lambda: _decode(self.core.create_namespaced_event(
            namespace, body, _request_timeout=self._timeout, _preload_content=False)))

    # --- Nodes -----------------------------------------------------------------------------------

    async def get_node(self, name: str) -> dict[str, Any]:
        return await self._call("get", "nodes", lambda: _decode(self.core.read_node(
            name, _request_timeout=self._timeout, _preload_content=False)))

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("patch", "nodes", lambda: _decode(self.core.patch_node(
            name, dict(patch), _content_type=STRATEGIC, _request_timeout=self._timeout, _preload_content=False)))

    async def patch_node_status(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("patch", "nodes/status", lambda: _decode(self.core.patch_node_status(
            name, dict(patch), _content_type=STRATEGIC, _request_timeout=self._timeout, _preload_content=False)))


def _decode(response: Any) -> dict[str, Any]:
    """The answer's JSON body (the raw urllib3 response of a call made with ``_preload_content=False``)."""
    data = json.loads(response.data or b"{}")
    return data if isinstance(data, dict) else {}


def _message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        return str(exc.body or "")[:300]
    return str(body.get("message", ""))[:500] if isinstance(body, dict) else ""
