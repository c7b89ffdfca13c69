"""The engine service's client: what it retries and what it does not."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

from stream.engine.config import PredictorConfig
from stream.engine.remote import RemoteEngineStage
from tests.engine.test_predict import _turn
from tests.serving import serving


@pytest.mark.parametrize(("status", "tries"), [(409, 1), (503, None), (429, None)])
async def test_a_refused_turn_is_not_retried_a_failed_one_is(
        status: int, tries: int | None, caplog: pytest.LogCaptureFixture) -> None:
    """409 (the service took other words under this index) would be refused again; 503 (no
    replica yet) and 429 (too many requests) may pass on a later try, until
    url_timeout_s."""
    posts: list[bytes] = []

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        if body == b"{}":  # the stage's probe when it starts
            return web.json_response({"error": "not a turn"}, status=400)
        posts.append(body)
        return web.json_response({"error": "no"}, status=status)

    async with serving(answer) as url:
        stage = RemoteEngineStage(PredictorConfig(url=url, url_timeout_s=2.0), "s/r")
        await stage.start()
        try:
            with caplog.at_level(logging.WARNING):
                turn = _turn(0, "P1", "Ben, did you finish the map?")
                assert await stage.process(turn) == ()
        finally:
            await stage.stop()
    if tries is None:
        assert len(posts) > 1 and "got no answer in 2 s" in caplog.text
    else:
        assert len(posts) == tries and f"refused (HTTP {status}" in caplog.text
