"""`KubeEmulator`: the HTTP server, its lifecycle, test hooks (request counts, faults, going offline).

A local/test tool: no authentication, no TLS. Never expose it beyond localhost. With a state file, the
objects outlive a restart (see persistence.py).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web

from kube_emulator import discovery, errors, persistence
from kube_emulator.faults import Fault, take_fault
from kube_emulator.handlers import ResourceHandler, error_response, json_response, parse_target, verb_of
from kube_emulator.objects import Objects, WriteOptions, install_crd
from kube_emulator.resources import CRD_KEY, NAMESPACES_KEY, Registry
from kube_emulator.store import Store

logger = logging.getLogger(__name__)
JSON = dict[str, Any]
CONTEXT_NAME = "libvirt-operator-dev"
BUILTIN_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's request size limit


def load_manifests(paths: Iterable[Path]) -> list[JSON]:
    """YAML documents of the given files, or of the *.yaml/*.yml/*.json files in given directories."""
    docs: list[JSON] = []
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json")) if path.is_dir() \
            else [path]
        for file in files:
            docs += [d for d in yaml.safe_load_all(file.read_text()) if isinstance(d, dict)]
    return docs


class KubeEmulator:
    """An in-process Kubernetes API server for tests and local mode (see docs/emulator.md)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, crd_paths: Sequence[Path] = (),
                 history_limit: int = 10000, bookmark_interval: float = 5.0, state_file: Path | None = None,
                 state_write_interval: float = persistence.WRITE_INTERVAL) -> None:
        self.host = host
        self.port = port
        self.crd_paths = [Path(p) for p in crd_paths]
        self.store = Store(history_limit)
        self.registry = Registry()
        self._objects = Objects(self.store, self.registry)
        self._handler = ResourceHandler(self._objects, self.registry, bookmark_interval)
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._seeded = False
        self.state_file = Path(state_file) if state_file is not None else None
        self._state_write_interval = state_write_interval
        self._state_writer: persistence.StateWriter | None = None

    # --- lifecycle ---

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self.state_file is not None and self._state_writer is None:
            if not self._seeded:
                await self._restore(self.state_file)
            self._state_writer = persistence.StateWriter(self.state_file, self.store, self._state_write_interval)
            self._state_writer.start()
        if not self._seeded:
            self._seed()
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        # The asyncio server behind the site is the only place the bound port is known.
        sockets = getattr(self._site._server, "sockets", None)
        if self.port == 0 and sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.store.close_watchers()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None
        if self._state_writer is not None:
            await self._state_writer.close()
            self._state_writer = None

    async def __aenter__(self) -> KubeEmulator:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def go_offline(self) -> None:
        """Stop listening and drop every open connection, as if the API server became unreachable."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        self.store.close_watchers()
        server = self._runner.server if self._runner is not None else None
        for connection in list(server.connections if server is not None else ()):
            connection.force_close()
            if connection.transport is not None:
                connection.transport.abort()

    async def go_online(self) -> None:
        """Listen again on the same port, with the same objects."""
        if self._runner is not None and self._site is None:
            await self._listen()

    async def _restore(self, path: Path) -> None:
        saved = await asyncio.to_thread(persistence.read, path)
        if saved is None:
            logger.info("no state file at %s yet: starting empty", path)
            return
        rv, objects = saved
        self.store.restore(rv, objects)
        for crd in self.store.objects_of(CRD_KEY):
            self.registry.register_crd(crd)
        logger.info("restored %d objects from %s (resourceVersion %d)", len(objects), path, rv)

    def _seed(self) -> None:
        namespaces = self.registry.get("", "v1", "namespaces")
        assert namespaces is not None
        for name in BUILTIN_NAMESPACES:
            if self.store.get(NAMESPACES_KEY, "", name) is None:
                self._objects.create(namespaces, "", {"metadata": {"name": name}}, WriteOptions())
        for doc in load_manifests(self.crd_paths):
            if doc.get("kind") == "CustomResourceDefinition":
                install_crd(self._objects, doc)
        self.store.start_history()
        self._seeded = True

    # --- kubeconfig ---

    def kubeconfig(self) -> JSON:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": CONTEXT_NAME, "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": CONTEXT_NAME, "user": {"token": "emulator-dummy-token"}}],
            "contexts": [{"name": CONTEXT_NAME, "context": {"cluster": CONTEXT_NAME, "user": CONTEXT_NAME,
                                                            "namespace": "default"}}],
            "current-context": CONTEXT_NAME,
            "preferences": {},
        }

    def write_kubeconfig(self, path: Path) -> None:
        """Write atomically, so a process polling for the file never reads half of it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                yaml.safe_dump(self.kubeconfig(), handle, sort_keys=False)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- test access ---

    def get_object(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> JSON | None:
        res = self.registry.get(group, version, plural)
        if res is None:
            return None
        found = self.store.get(res.storage_key, namespace or "" if res.namespaced else "", name)
        return copy.deepcopy(res.from_storage(found)) if found is not None else None

    def objects(self, group: str, version: str, plural: str) -> list[JSON]:
        res = self.registry.get(group, version, plural)
        if res is None:
            return []
        return [copy.deepcopy(res.from_storage(o)) for o in self.store.objects_of(res.storage_key)]

    def inject_fault(self, *, status: int, verb: str | None = None, resource: str | None = None,
                     count: int = 1) -> None:
        """The next `count` requests matching verb/resource (None: any) fail with this HTTP status."""
        self._faults.append(Fault(status, verb, resource, count))

    def _take_fault(self, verb: str, resource: str) -> errors.ApiError | None:
        fault = take_fault(self._faults, verb, resource)
        return None if fault is None else errors.injected(fault.status, verb, resource)

    # --- HTTP ---

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._route(request)
        except errors.ApiError as err:
            return error_response(err)
        except web.HTTPException:
            raise
        except Exception as exc:  # a bug here must still answer like a server, and be visible
            logger.exception("emulator failed on %s %s", request.method, request.path_qs)
            return error_response(errors.ApiError(500, f"Internal error occurred: {exc!r}", "InternalError"))

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/_emulator/"):
            return await self._debug(request, path)
        target = parse_target(path)
        if target is not None and self.registry.get(target.group, target.version, target.plural) is not None:
            verb = verb_of(request.method, target, request.query)
            self.requests[(verb, target.resource)] += 1
            fault = self._take_fault(verb, target.resource)
            if fault is not None:
                raise fault
            return await self._handler.handle(request, target, verb)
        if request.method != "GET":
            raise errors.method_not_allowed() if target is None else errors.page_not_found()
        return self._non_resource(path, request)

    def _non_resource(self, path: str, request: web.Request) -> web.StreamResponse:
        if path in ("/healthz", "/livez", "/readyz") or path.startswith(("/healthz/", "/livez/", "/readyz/")):
            return web.Response(text="ok")
        if path == "/version":
            return json_response(discovery.SERVER_VERSION)
        if path == "/api":
            return json_response(discovery.api_versions(f"{self.host}:{self.port}"))
        if path == "/apis":
            return json_response(discovery.api_group_list(self.registry))
        if path == "/openapi/v3":
            return json_response(discovery.openapi_v3_index(self.registry))
        if path == "/openapi/v2":
            return self._openapi_v2(request)
        parts = path.strip("/").split("/")
        found: JSON | None = None
        if parts[:2] == ["openapi", "v3"]:
            rest = parts[2:]
            if len(rest) == 2 and rest[0] == "api":
                found = discovery.openapi_v3_document(self.registry, "", rest[1])
            elif len(rest) == 3 and rest[0] == "apis":
                found = discovery.openapi_v3_document(self.registry, rest[1], rest[2])
        elif len(parts) == 2 and parts[0] == "api":
            found = discovery.resource_list(self.registry, "", parts[1])
        elif len(parts) == 2 and parts[0] == "apis":
            found = discovery.api_group(self.registry, parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            found = discovery.resource_list(self.registry, parts[1], parts[2])
        if found is None:
            raise errors.page_not_found()
        return json_response(found)

    def _openapi_v2(self, request: web.Request) -> web.Response:
        if not discovery.accepts_openapi_v2_json(request.headers.get("Accept", "")):
            return web.Response(status=406, text="406 - Not Acceptable", headers={"Vary": "Accept"})
        body = json.dumps(discovery.openapi_v2(self.registry), separators=(",", ":")).encode()
        etag = '"' + hashlib.sha512(body).hexdigest()[:32].upper() + '"'
        headers = {"ETag": etag, "Vary": "Accept"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=discovery.OPENAPI_V2_JSON, headers=headers)

    async def _debug(self, request: web.Request, path: str) -> web.Response:
        if path == "/_emulator/requests" and request.method == "GET":
            listed = [{"verb": v, "resource": r, "count": c} for (v, r), c in sorted(self.requests.items())]
            return json_response(listed)
        if path == "/_emulator/reset-counts" and request.method == "POST":
            self.requests.clear()
            return json_response({})
        if path == "/_emulator/faults" and request.method == "POST":
            try:
                body = await request.json()
                self.inject_fault(status=int(body["status"]), verb=body.get("verb"), resource=body.get("resource"),
                                  count=int(body.get("count", 1)))
            except (ValueError, KeyError, TypeError) as exc:
                raise errors.bad_request(f"a fault needs {{status, verb?, resource?, count?}}: {exc}") from None
            return json_response({})
        raise errors.page_not_found()


async def serve(*, kubeconfig: Path, port: int = 0, crd_paths: Sequence[Path] = (), host: str = "127.0.0.1",
                state_file: Path | None = None,
                ready: Callable[[KubeEmulator], Awaitable[None]] | None = None) -> None:
    """Run an emulator until cancelled; the kubeconfig appears once it answers requests."""
    async with KubeEmulator(host=host, port=port, crd_paths=crd_paths, state_file=state_file) as emulator:
        emulator.write_kubeconfig(kubeconfig)
        logger.info("Kubernetes API emulator listening on %s (kubeconfig %s)", emulator.url, kubeconfig)
        if ready is not None:
            await ready(emulator)
        await asyncio.Event().wait()
