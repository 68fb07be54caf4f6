"""Serve an ASGI app (a test's webhook receiver, WHEP server, ...) with uvicorn on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn


@contextlib.asynccontextmanager
async def serving_app(app: object, port: int = 0, start_timeout: float = 60.0) -> AsyncIterator[int]:
    """Run ``app`` on 127.0.0.1 (``port`` 0: a free one) until the block ends; yields the port.
    A server that fails to start raises its error instead of being waited on."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))  # type: ignore[arg-type]
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(start_timeout):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.02)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task
