"""The engine service's client: what it retries and what it does not."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

from stream.engine.config import PredictorConfig
from stream.engine.remote import RemoteEngineStage
from tests.broker import free_port
from tests.engine.test_predict import _turn


@pytest.mark.parametrize(("status", "tries"), [(409, 1), (503, None)])
async def test_a_refused_turn_is_not_retried_a_failed_one_is(
        status: int, tries: int | None, caplog: pytest.LogCaptureFixture) -> None:
    """409 (the service took other words under this index) would be refused again; 503 (no
    replica yet) may pass on a later try, until url_timeout_s."""
    posts: list[bytes] = []

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        if body == b"{}":  # the stage's probe when it starts
            return web.json_response({"error": "not a turn"}, status=400)
        posts.append(body)
        return web.json_response({"error": "no"}, status=status)

    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stage = RemoteEngineStage(PredictorConfig(url=f"http://127.0.0.1:{port}/",
                                              url_timeout_s=2.0), "s/r")
    try:
        await stage.start()
        with caplog.at_level(logging.WARNING):
            assert await stage.process(_turn(0, "P1", "Ben, did you finish the map?")) == ()
    finally:
        await stage.stop()
        await runner.cleanup()
    if tries is None:
        assert len(posts) > 1 and "got no answer in 2 s" in caplog.text
    else:
        assert len(posts) == tries and f"refused (HTTP {status}" in caplog.text
