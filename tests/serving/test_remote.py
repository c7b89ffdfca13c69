"""The engine service's client: what it retries and what it does not."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web

from stream.engine.config import PredictorConfig
from stream.serving.remote import RemoteEngineStage
from tests.endpoint import serving
from tests.tiny import scene_turn


@pytest.mark.parametrize(("status", "tries"), [
    (409, 1), (400, 1), (500, 1), (507, 1), (503, None), (502, None), (429, None)])
async def test_a_refused_turn_is_not_retried_a_failed_one_is(
        status: int, tries: int | None, caplog: pytest.LogCaptureFixture) -> None:
    """409 (late, or other words under this index), 400 (not a turn), 500 (the engine
    failed on it) and 507 (no room) would be answered the same again: retrying them for
    a minute made an 8 s clip take 185 s. 503 and 502 (no replica yet) and 429 (too many
    requests) may pass on a later try, until url_timeout_s."""
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
                turn = scene_turn(0, "P1", "Ben, did you finish the map?")
                assert await stage.process(turn) == ()
        finally:
            await stage.stop()
    if tries is None:
        assert len(posts) > 1 and "got no answer in 2 s" in caplog.text
    else:
        assert len(posts) == tries and f"refused (HTTP {status}" in caplog.text


async def test_a_service_that_stopped_answering_costs_one_timeout_not_one_per_turn(
        caplog: pytest.LogCaptureFixture) -> None:
    """After one turn found no answer for a whole url_timeout_s, each turn gets one try
    until the service answers again; the turn it answers goes through as before."""
    posts: list[int] = []
    up = False

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        if body == b"{}":
            return web.json_response({"error": "not a turn"}, status=400)
        posts.append(json.loads(body)["index"])
        if not up:
            return web.json_response({"error": "no replica"}, status=503)
        return web.json_response({"speaker": "P1", "turn": posts[-1], "predictor": "engine"})

    async with serving(answer) as url:
        stage = RemoteEngineStage(PredictorConfig(url=url, url_timeout_s=1.0), "s/r")
        await stage.start()
        try:
            with caplog.at_level(logging.WARNING):
                assert await stage.process(scene_turn(0, "P1", "Ben, hello.")) == ()
                tried = len(posts)
                assert await stage.process(scene_turn(1, "P2", "Hi.")) == ()
                assert len(posts) == tried + 1, "one try while the service is down"
                up = True
                (prediction,) = await stage.process(scene_turn(2, "P1", "Where were you?"))
        finally:
            await stage.stop()
    assert tried > 1 and prediction.turn == 2
    assert "one try each, until it answers" in caplog.text and "answers again" in caplog.text


async def test_the_edge_sends_its_names_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's predictor names people as the edge's does (a turn named only by
    the transcript got "Ben" remotely, "P2" in process), and the token goes in a header,
    from the environment when the config has none."""
    seen: list[tuple[str | None, dict]] = []

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        if body != b"{}":
            seen.append((request.headers.get("Authorization"), json.loads(body)))
        return web.json_response({"error": "stop here"}, status=400)

    monkeypatch.setenv("SOCIALSTREAM_ENGINE_TOKEN", "secret")
    async with serving(answer) as url:
        stage = RemoteEngineStage(PredictorConfig(url=url), "s/r", {"P2": "Ben"})
        await stage.start()
        try:
            await stage.process(scene_turn(0, "P1", "Ben, hello."))
        finally:
            await stage.stop()
    ((authorization, body),) = seen
    assert authorization == "Bearer secret" and body["names"] == {"P2": "Ben"}


async def test_an_edge_without_the_services_token_is_one_clear_error() -> None:
    from stream.errors import UserError

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"error": "no valid token"}, status=401)

    async with serving(answer) as url:
        stage = RemoteEngineStage(PredictorConfig(url=url), "s/r")
        with pytest.raises(UserError, match="wants a token it knows; set "
                                            "SOCIALSTREAM_ENGINE_TOKEN"):
            await stage.start()


async def test_serves_own_500_for_a_replica_that_died_mid_turn_is_retried() -> None:
    """Serve's proxy answers a plain-text 500 when the replica computing the turn dies;
    the next try reaches another replica (a turn sent again is answered once). The
    service's own 500 ({"error": ...}, the engine failed on the turn) is not retried."""
    posts: list[int] = []

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        if body == b"{}":
            return web.json_response({"error": "not a turn"}, status=400)
        posts.append(json.loads(body)["index"])
        if len(posts) == 1:
            return web.Response(text="Internal Server Error", status=500)
        return web.json_response({"speaker": "P1", "turn": posts[-1], "predictor": "engine"})

    async with serving(answer) as url:
        stage = RemoteEngineStage(PredictorConfig(url=url, url_timeout_s=10.0), "s/r")
        await stage.start()
        try:
            (prediction,) = await stage.process(scene_turn(0, "P1", "Ben, hello."))
        finally:
            await stage.stop()
    assert posts == [0, 0] and prediction.turn == 0


async def test_a_hung_service_gets_a_knock_not_a_turn_while_down() -> None:
    """Taken for down after one turn's whole timeout, a service that accepts connections
    and never answers must not cost every later turn that timeout again."""
    turns: list[int] = []
    knocks = 0
    hung = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        nonlocal knocks
        body = await request.read()
        if body == b"{}" and not turns:  # the probe when the stage starts
            return web.json_response({"error": "not a turn"}, status=400)
        if body == b"{}":
            knocks += 1
        else:
            turns.append(json.loads(body)["index"])
        await hung.wait()  # the service hangs until the test ends
        return web.json_response({})

    async with serving(answer) as url:
        stage = RemoteEngineStage(PredictorConfig(url=url, url_timeout_s=0.5), "s/r")
        await stage.start()
        try:
            assert await stage.process(scene_turn(0, "P1", "Ben, hello.")) == ()
            assert stage.down
            assert await stage.process(scene_turn(1, "P2", "Hi.")) == ()
        finally:
            hung.set()  # the server's shutdown waits for its handlers
            await stage.stop()
    assert turns == [0] and knocks == 1
