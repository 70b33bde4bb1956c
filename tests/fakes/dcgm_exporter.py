"""A dcgm-exporter stand-in over real HTTP: serves a recorded exposition on /metrics.

``body`` can be swapped while it runs; ``delay_s`` holds each answer back (a hung exporter);
``status`` answers with another HTTP status. ``hits`` counts scrapes.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.fakes.threaded_aiohttp import ThreadedAiohttpServer


class FakeDcgmExporter(ThreadedAiohttpServer):
    thread_name = "fake-dcgm-exporter"

    def __init__(self, body: str, *, delay_s: float = 0.0, status: int = 200) -> None:
        super().__init__()
        self.body = body
        self.delay_s = delay_s
        self.status = status
        self.hits = 0

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(status=self.status, text=self.body, content_type="text/plain")
