"""HTTP endpoints of the operator pod: /healthz (liveness), /readyz (readiness), /metrics.

Readiness turns true only once start-up reconciliation is done, so a rolling update waits for it;
liveness only says the asyncio loop answers, so a slow start-up is never killed for being slow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from libvirt_operator.metrics import Metrics

logger = logging.getLogger(__name__)


class HealthServer:
    def __init__(self, *, host: str, health_port: int, metrics_port: int, metrics: Metrics,
                 ready: Callable[[], tuple[bool, str]]) -> None:
        self._host = host
        self._health_port = health_port
        self._metrics_port = metrics_port
        self._metrics = metrics
        self._ready = ready
        self._runners: list[web.AppRunner] = []
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        health = web.Application()
        health.router.add_get("/healthz", self._healthz)
        health.router.add_get("/readyz", self._readyz)
        apps = [("health", health, self._health_port)]
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", self._metrics_handler)
        if self._metrics_port == self._health_port:
            health.router.add_get("/metrics", self._metrics_handler)
        elif self._metrics_port:
            apps.append(("metrics", metrics_app, self._metrics_port))
        for name, app, port in apps:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, self._host, port)
            await site.start()
            self._runners.append(runner)
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.ports[name] = sockets[0].getsockname()[1] if sockets else port
            logger.info("%s endpoint listening on %s:%s", name, self._host, self.ports[name])

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, why = self._ready()
        return web.Response(status=200 if ready else 503, text=("ready" if ready else f"not ready: {why}") + "\n")

    async def _metrics_handler(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), content_type="text/plain", charset="utf-8")
