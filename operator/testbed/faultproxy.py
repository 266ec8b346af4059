"""A small fault-injecting HTTP proxy between an operator and the real kube-apiserver.

The operator speaks plain HTTP to 127.0.0.1:PORT with its own bearer token; the proxy forwards every
request over TLS to the API server unchanged, streaming responses (watches included), so RBAC and the
server's answers are the real ones. Faults a test can inject:

- an HTTP error (429, 500, 503, 410 Gone, ...) as a `Status` answer to the next N requests matching a verb
  and resource, instead of forwarding them;
- `freeze()`: the server unreachable without refused connections (requests and open watch streams hang
  until `thaw()`), as in a network partition;
- `stall_watches()`: open watch streams stop delivering events while the connection stays up;
- `reset()`: every connection aborted, both ends, as a network fault does.

`streaming(verb, resource)` counts this proxy's own open streams (a watch whose answer has begun), so a
test can wait for *its* operator's watch: the API server's audit log names only the identity, which the
operators of tests running side by side share.

It runs its own event loop in a daemon thread, so the synchronous test code drives it by method calls.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from kube_emulator.faults import Fault, take_fault
from testbed.requests_path import classify

T = TypeVar("T")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}
REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 410: "Expired",
           429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


def status_body(code: int, verb: str, resource: str) -> dict[str, Any]:
    reason = REASONS.get(code, "InternalError")
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": code,
            "reason": reason, "message": f"injected by the test's fault proxy: {code} for {verb} {resource}",
            "details": {"retryAfterSeconds": 1} if code == 429 else {}}


class FaultProxy:
    def __init__(self, upstream: str, ca_file: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_file = ca_file
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fault-proxy", daemon=True)
        self._faults: list[Fault] = []
        self._open = asyncio.Event()  # set: traffic flows; clear: frozen
        self._watches_flow = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._lock = threading.Lock()
        self._streaming: Counter[tuple[str, str]] = Counter()  # (verb, resource) of answers being streamed

    # --- lifecycle (called from the test's thread) ------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    async def _start(self) -> None:
        self._open.set()
        self._watches_flow.set()
        ctx = ssl.create_default_context(cafile=self.ca_file)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=0),
                                              timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False)
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _stop(self) -> None:
        self._open.set()
        self._watches_flow.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # --- faults -----------------------------------------------------------------------------------------

    def inject_fault(self, *, status: int, verb: str | None = None, resource: str | None = None,
                     count: int = 1) -> None:
        with self._lock:
            self._faults.append(Fault(status, verb, resource, count))

    def _take_fault(self, verb: str, resource: str) -> Fault | None:
        with self._lock:
            return take_fault(self._faults, verb, resource)

    def freeze(self) -> None:
        self.loop.call_soon_threadsafe(self._open.clear)

    def thaw(self) -> None:
        self.loop.call_soon_threadsafe(self._open.set)

    def stall_watches(self) -> None:
        self.loop.call_soon_threadsafe(self._watches_flow.clear)

    def resume_watches(self) -> None:
        self.loop.call_soon_threadsafe(self._watches_flow.set)

    def streaming(self, verb: str, resource: str) -> int:
        """How many answers to (verb, resource) requests are being streamed to the client right now."""
        with self._lock:
            return self._streaming[(verb, resource)]

    def reset(self) -> None:
        """Abort every client connection (the proxy then drops the matching upstream ones)."""
        def abort() -> None:
            for transport in list(self._transports):
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
        self.loop.call_soon_threadsafe(abort)

    # --- forwarding -------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        verb, resource = classify(request.method, request.path, request.query_string)
        await self._open.wait()
        fault = self._take_fault(verb, resource)
        if fault is not None:
            return web.Response(status=fault.status, content_type="application/json",
                                text=json.dumps(status_body(fault.status, verb, resource)))
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read() if request.can_read_body else None
        transport = request.transport
        if transport is not None:
            self._transports.add(transport)
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                             data=body, allow_redirects=False,
                                             # a body without a Content-Type stays so (the server reads JSON)
                                             skip_auto_headers=("Content-Type",)) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        response.headers[key] = value
                await response.prepare(request)
                with self._lock:
                    self._streaming[(verb, resource)] += 1
                try:
                    async for chunk in upstream.content.iter_any():
                        await self._open.wait()
                        if verb == "watch":
                            await self._watches_flow.wait()
                        await response.write(chunk)
                    await response.write_eof()
                finally:
                    with self._lock:
                        self._streaming[(verb, resource)] -= 1
                return response
        except (aiohttp.ClientError, ConnectionResetError) as exc:
            # The server down (connection refused) or a stream cut: the client sees its connection
            # aborted, as it would without the proxy, never an answer the server did not give.
            if isinstance(exc, aiohttp.ClientConnectorError) or (response is not None and response.prepared) \
                    or transport is None or transport.is_closing():
                if transport is not None:
                    transport.abort()
                raise asyncio.CancelledError from exc
            return web.Response(status=502, text=f"fault proxy: upstream failed: {exc!r}")
        finally:
            if transport is not None:
                self._transports.discard(transport)
