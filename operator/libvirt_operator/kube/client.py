"""The operator's own Kubernetes API access (outside kopf's handler machinery): one module, one client.

The official client's asyncio flavour, ``kubernetes.aio`` (in the same package since 37.0): every call is
a coroutine on the operator's loop over one aiohttp connection pool, so an event burst's status patches
go out as fast as the API server answers them. The blocking client in a thread pool made about 600
patches/s against the emulator where requests on the loop made 1,500/s (``benchmarks/patch_throughput.py``),
and its threads competed with the loop for the GIL. At most ``connections`` requests are in flight; more
wait for a free connection (the pool's limit, not a queue of our own). Errors leave as ``KubeError`` with
the HTTP status, so callers can tell a conflict (409) or a vanished object (404) from an outage (retry
with backoff).

Every request goes through the client's own request path (``_send``: its authentication, TLS and pool),
and every answer is read as plain JSON, never through the client's models: those (pydantic) refuse objects
the API server accepts, e.g. a Node without a kubelet, whose ``status.nodeInfo`` is empty or partial (a
write that landed then looked like a failure and was retried forever). Plain JSON is also what the callers
work with. ``_request`` checks the status; ``watch_vms`` does the same for its stream.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import socket
import urllib.parse
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import aiohttp
import kubernetes.aio.client
import kubernetes.aio.config
from kubernetes.aio.client.exceptions import ApiException

from libvirt_operator.api.constants import GROUP, KIND, MIGRATION_PLURAL, PLURAL, VERSION

logger = logging.getLogger(__name__)

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


async def load_configuration(kubeconfig: str | None) -> kubernetes.aio.client.Configuration:
    """kubeconfig file when given, else in-cluster config (the DaemonSet case: the token file is reread
    when it rotates)."""
    configuration = kubernetes.aio.client.Configuration()
    if kubeconfig:
        await kubernetes.aio.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration,
                                                     persist_config=False)
    else:
        kubernetes.aio.config.load_incluster_config(client_configuration=configuration)
    return configuration


async def load_api_client(kubeconfig: str | None, *, connections: int = 16) -> kubernetes.aio.client.ApiClient:
    """An API client with at most ``connections`` requests in flight. Call on the loop that will use it."""
    configuration = await load_configuration(kubeconfig)
    configuration.connection_pool_maxsize = connections
    # Not the environment's proxy settings and ~/.netrc: aiohttp reads both again for every request, each in
    # a worker thread (two thread hops per status patch, about a tenth of the operator's CPU in an event
    # burst, profiled). kopf's watch does not read them either (its trust_env is off), so both clients reach
    # the API server alike; a proxy comes from the kubeconfig (proxy-url).
    configuration.client_session_kwargs = {"trust_env": False}
    return kubernetes.aio.client.ApiClient(configuration)


class KubeClient:
    def __init__(self, api_client: kubernetes.aio.client.ApiClient, *, request_timeout: float = 15.0,
                 component: str = "libvirt-operator") -> None:
        self.api_client = api_client
        self._timeout = request_timeout
        self.component = component
        self.host = socket.gethostname()
        self.on_request: Callable[[str, str, bool], None] | None = None  # metrics hook: verb, resource, ok

    def _count(self, verb: str, resource: str, ok: bool) -> None:
        if self.on_request is not None:
            self.on_request(verb, resource, ok)

    async def close(self) -> None:
        await self.api_client.close()

    # --- VirtualMachines -------------------------------------------------------------------------

    async def list_vms_at(self, namespace: str | None = None, *, field_selector: str | None = None,
                          resource_version: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """The VMs and the list's resourceVersion (where a watch of the same VMs starts). Without a
        ``resource_version`` the list is consistent (served from the watch cache on Kubernetes 1.31+);
        with one, anything not older than it (``resourceVersionMatch=NotOlderThan``: from the cache)."""
        query: list[tuple[str, str]] = [("fieldSelector", field_selector)] if field_selector else []
        if resource_version:
            query += [("resourceVersion", resource_version), ("resourceVersionMatch", "NotOlderThan")]
        result = await self._request("list", PLURAL, "GET", _collection(PLURAL, namespace), query=query)
        return list(result.get("items") or []), str((result.get("metadata") or {}).get("resourceVersion", ""))

    async def watch_vms(self, namespace: str | None, *, resource_version: str, field_selector: str | None,
                        server_timeout: int, client_timeout: float) -> AsyncGenerator[bytes, None]:
        """The lines of one watch request of VirtualMachines (one JSON event each, bookmarks allowed),
        until the server ends it (``server_timeout``), or ``KubeError``; kube/vm_watch.py reads them."""
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("resourceVersion", resource_version),
                 ("timeoutSeconds", str(server_timeout))]
        if field_selector:
            query.append(("fieldSelector", field_selector))
        response = await self._send("watch", PLURAL, "GET", _collection(PLURAL, namespace), query=query,
                                    request_timeout=client_timeout)
        try:
            if not 200 <= response.status <= 299:
                raise self._refused("watch", PLURAL, response, await response.read())
            self._count("watch", PLURAL, True)
            try:
                async for line in response.content:
                    yield line
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:  # reset, timeout, too long
                raise KubeError(f"watch {PLURAL}: {exc!r}") from exc
        finally:
            response.release()

    async def get_vm(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._request("get", PLURAL, "GET", _item(PLURAL, namespace, name))

    async def patch_vm_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("patch", f"{PLURAL}/status", "PATCH", _item(PLURAL, namespace, name) + "/status",
                                   body={"status": dict(status)}, content_type=MERGE)

    async def json_patch_vm(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return await self._request("patch", PLURAL, "PATCH", _item(PLURAL, namespace, name), body=ops,
                                   content_type=JSON_PATCH)

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

    # --- VirtualMachineMigrations ---------------------------------------------------------------

    async def list_migrations(self, namespace: str | None = None, *, limit: int | None = None) -> list[dict[str, Any]]:
        query = [("limit", str(limit))] if limit else []
        result = await self._request("list", MIGRATION_PLURAL, "GET", _collection(MIGRATION_PLURAL, namespace),
                                     query=query)
        return list(result.get("items") or [])

    async def may_watch_migrations(self, namespace: str | None = None) -> bool:
        """Whether the API serves VirtualMachineMigrations and lets this operator list them (403 and 404: no;
        an outage: yes, kopf then waits for the API as it does for VMs)."""
        try:
            await self.list_migrations(namespace, limit=1)
        except KubeError as exc:
            return exc.status not in (403, 404)
        return True

    async def patch_migration_status(self, namespace: str, name: str,
                                     status: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("patch", f"{MIGRATION_PLURAL}/status", "PATCH",
                                   _item(MIGRATION_PLURAL, namespace, name) + "/status",
                                   body={"status": dict(status)}, content_type=MERGE)

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
        await self._request("create", "events", "POST", f"/api/v1/namespaces/{_q(namespace)}/events", body=body)

    # --- Nodes -----------------------------------------------------------------------------------

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        """A Secret's data, decoded (get only: the chart grants no list or watch on Secrets)."""
        body = await self._request("get", "secrets", "GET", f"/api/v1/namespaces/{_q(namespace)}/secrets/{_q(name)}")
        data = body.get("data") or {}
        return {str(k): base64.b64decode(v) for k, v in data.items() if isinstance(v, str)}

    async def get_node(self, name: str) -> dict[str, Any]:
        return await self._request("get", "nodes", "GET", f"/api/v1/nodes/{_q(name)}")

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("patch", "nodes", "PATCH", f"/api/v1/nodes/{_q(name)}", body=dict(patch),
                                content_type=STRATEGIC)

    async def patch_node_status(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("patch", "nodes/status", "PATCH", f"/api/v1/nodes/{_q(name)}/status",
                                body=dict(patch), content_type=STRATEGIC)

    async def _request(self, verb: str, resource: str, method: str, path: str, *,
                       query: list[tuple[str, str]] | None = None, body: Any = None,
                       content_type: str | None = None) -> dict[str, Any]:
        """One request and its JSON answer, or ``KubeError`` (with the HTTP status when the server answered)."""
        try:
            response = await self._send(verb, resource, method, path, query=query, body=body,
                                        content_type=content_type)
            try:
                answer = await response.read()
            finally:
                response.release()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:  # refused, reset, TLS, timeout
            self._count(verb, resource, False)
            raise KubeError(f"{verb} {resource}: {exc!r}") from exc
        if not 200 <= response.status <= 299:
            raise self._refused(verb, resource, response, answer)
        self._count(verb, resource, True)
        return _decode(answer)

    def _refused(self, verb: str, resource: str, response: aiohttp.ClientResponse, answer: bytes) -> KubeError:
        """A non-2xx answer, counted, as the error to raise (its Status message included)."""
        self._count(verb, resource, False)
        return KubeError(f"{verb} {resource}: {response.status} {response.reason}: {_message(answer)}",
                         response.status)

    async def _send(self, verb: str, resource: str, method: str, path: str, *,
                    query: list[tuple[str, str]] | None = None, body: Any = None, content_type: str | None = None,
                    request_timeout: float | None = None) -> aiohttp.ClientResponse:
        """A request through the client's own request path (authentication, TLS, the pool), without its
        generated API classes: those validate every argument with pydantic (about a tenth of a status
        patch's CPU on the operator's side, profiled) and CoreV1Api loads about 250 models at import, 25 MiB
        of RSS (measured) for the five core calls made here. The response is unread: the caller reads it."""
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        elif body is not None:
            headers["Content-Type"] = "application/json"
        try:
            params = await self.api_client.param_serialize(method=method, resource_path=path, query_params=query,
                                                           header_params=headers, body=body,
                                                           auth_settings=["BearerToken"])
            sent = await self.api_client.call_api(*params, _request_timeout=request_timeout or self._timeout)
        except ApiException as exc:  # refused before sending (bad arguments)
            self._count(verb, resource, False)
            raise KubeError(f"{verb} {resource}: {exc.status} {exc.reason}", exc.status) from exc
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self._count(verb, resource, False)
            raise KubeError(f"{verb} {resource}: {exc!r}") from exc
        response: aiohttp.ClientResponse = sent.response
        return response


def _collection(plural: str, namespace: str | None) -> str:
    prefix = f"/apis/{GROUP}/{VERSION}"
    return f"{prefix}/namespaces/{_q(namespace)}/{plural}" if namespace else f"{prefix}/{plural}"


def _item(plural: str, namespace: str, name: str) -> str:
    return f"{_collection(plural, namespace)}/{_q(name)}"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _decode(body: bytes) -> dict[str, Any]:
    data = json.loads(body or b"{}")
    return data if isinstance(data, dict) else {}


def _message(body: bytes) -> str:
    """The Status message of an error answer (its body when not JSON), bounded for logs and conditions."""
    try:
        status = json.loads(body or b"{}")
    except ValueError:
        return body[:300].decode(errors="replace")
    return str(status.get("message", ""))[:500] if isinstance(status, dict) else ""
