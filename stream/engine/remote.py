"""The engine as a remote service: each turn goes to `socialstream serve` over HTTP.

Edge machines then run perception and turns only, and one model serves many of
them (`stream/engine/service.py`). The stage stands where `EngineStage` stands and
yields the same `Prediction`s, rebuilt from the service's prediction events. A turn
is sent with the key frames the engine takes, the session id in the
`serve_multiplexed_model_id` header, one at a time (the next after the answer).

The service must answer when the stage starts (else a one-line error says where it
was looked for). Later, a turn that fails (a replica that died, a restart) is retried
until `url_timeout_s`, then its engine answers are given up with a warning: the
fusion predictor still answers that turn, and the service's turn log keeps the
conversation whole for the turns after it. A turn the service refuses (HTTP 4xx: not a
turn, other words under an index it took) is not retried: it would be refused again;
408 and 429 (timed out, too many requests) ask for a later try and get one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from stream.engine.config import PredictorConfig
from stream.engine.predict import key_frames
from stream.engine.service import HEADER
from stream.engine.turnlog import turn_to_json
from stream.errors import UserError
from stream.frames import Answer, Item, Prediction, Turn
from stream.runtime import Stage

log = logging.getLogger(__name__)
RETRY_S = 0.5
LATER = frozenset((408, 429))
"""4xx statuses that ask the client to try again later."""


@dataclass(frozen=True)
class Failure:
    """Why a turn got no prediction event: an HTTP status, or a connection problem."""

    reason: str
    status: int | None = None

    @property
    def refused(self) -> bool:
        """The service judged the turn itself: sending it again would be refused again."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in LATER

    def __str__(self) -> str:
        return self.reason if self.status is None else f"HTTP {self.status}: {self.reason}"


class RemoteEngineStage(Stage):
    name = "engine"
    inputs = (Turn,)

    def __init__(self, config: PredictorConfig, session: str) -> None:
        """`session`: the conversation's id at the service (its cache and turn log)."""
        assert config.url is not None and not bridged(config), "needs an http(s) engine.url"
        self.config, self.session, self.url = config, session, config.url
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=self.config.url_timeout_s))
        try:  # anything but a refused connection says a service is there
            async with self.http.post(self.url, data=b"{}") as response:
                await response.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            await self.http.close()
            raise UserError(f"--engine {self.url}: no engine service answers there ({e}); "
                            "start one with socialstream serve") from None

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Turn):
            return ()
        assert self.http is not None, "start() opens the connection"
        taken = key_frames(item, self.config.frames_per_turn)
        body = json.dumps(turn_to_json(taken)).encode()
        began = time.perf_counter()
        until = time.monotonic() + self.config.url_timeout_s
        while True:
            problem = await self._post(body)
            if isinstance(problem, dict):
                return (prediction_from_event(problem, item, time.perf_counter() - began),)
            if problem.refused:
                log.warning("engine service %s: turn %d refused (%s); the turn goes on "
                            "without the engine's scores", self.url, item.index, problem)
                return ()
            if time.monotonic() + RETRY_S > until:
                log.warning("engine service %s: turn %d got no answer in %.0f s (%s); the "
                            "turn goes on without the engine's scores", self.url, item.index,
                            self.config.url_timeout_s, problem)
                return ()
            await asyncio.sleep(RETRY_S)

    async def _post(self, body: bytes) -> dict[str, Any] | Failure:
        """The prediction event, or what went wrong."""
        assert self.http is not None
        try:
            async with self.http.post(self.url, data=body, headers={
                    HEADER: self.session, "Content-Type": "application/json"}) as response:
                if response.status == 200:
                    return await response.json()
                return Failure((await response.text())[:200], response.status)
        except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError) as e:
            return Failure(str(e) or type(e).__name__)


def bridged(config: PredictorConfig) -> bool:
    """The engine is reached through an MQTT broker (`socialstream serve --mqtt`): turns go
    out with the MQTT sink and the bridge publishes the predictions."""
    return config.url is not None and config.url.startswith(("mqtt://", "mqtts://"))


def prediction_from_event(event: dict[str, Any], turn: Turn, latency_s: float) -> Prediction:
    """The `Prediction` a prediction event was made from (its probabilities and scores as
    rounded in the event)."""
    def answer(task: str, entry: dict[str, Any], target: str | None) -> Answer:
        return Answer(task, entry["question"], entry["answer"], entry["scores"], target,
                      probabilities=entry["probabilities"])

    answers = []
    if event.get("addressee"):
        answers.append(answer("addressee", event["addressee"], None))
    answers += [answer("pronoun", p, p["pronoun"]) for p in event.get("pronouns", [])]
    if event.get("mentioned"):
        answers.append(answer("mentioned", event["mentioned"], event["mentioned"].get("name")))
    return Prediction(pts=turn.pts, turn=turn.index, start=turn.start, end=turn.end,
                      speaker=event.get("speaker"), answers=tuple(answers),
                      latency_s=latency_s, predictor=event.get("predictor", "engine"),
                      known_at=turn.known_at)
