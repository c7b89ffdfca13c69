"""The engine as a remote service: each turn goes to `socialstream serve` over HTTP.

Edge machines then run perception and turns only, and one model serves many of
them (`stream/serving/service.py`). The stage stands where `EngineStage` stands and
yields the same `Prediction`s, rebuilt from the service's prediction events. A turn
is sent with the key frames the engine takes, the session id in the
`serve_multiplexed_model_id` header, one at a time (the next after the answer).

The service must answer when the stage starts (else a one-line error says where it
was looked for). Later, only what can succeed is tried again: a turn that got no
answer (a replica that died, a restart: no connection, 502, 503, 504) or was asked to
come later (408, 429) is retried until `url_timeout_s` (so is a plain-text 500: Serve's
own, for a replica that died mid-turn), then its engine answers are
given up with a warning: the fusion predictor still answers that turn, and the
service's turn log keeps the conversation whole for the turns after it. Any other
status is the service's judgement of the turn (4xx: not a turn, late, other words under
an index it took; 500: the engine failed on it; 507: no room) and is given up at once.
A service that gave no answer for a whole `url_timeout_s` is taken for down: until it
answers again each turn gets a knock of at most `KNOCK_S` and, if that is answered, one
try, so that a dead or hung service costs a live session one timeout, not one per turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from stream.engine.config import PredictorConfig
from stream.engine.predict import key_frames
from stream.errors import UserError
from stream.frames import Answer, Item, Prediction, Turn
from stream.runtime import Stage
from stream.serving.service import HEADER, TOKEN_ENV
from stream.serving.wire import turn_to_json

log = logging.getLogger(__name__)
RETRY_S = 0.5
KNOCK_S = 2.0
"""How long a service taken for down has to answer a knock before a turn is tried."""
AGAIN = frozenset((408, 429, 502, 503, 504))
"""Statuses a later try can change: asked to come later, or no replica answered."""


@dataclass(frozen=True)
class Failure:
    """Why a turn got no prediction event: an HTTP status, or a connection problem."""

    reason: str
    status: int | None = None

    ours: bool = True
    """The service's own answer (`{"error": ...}`), not Serve's: a replica that died
    mid-turn is a plain-text 500 from Serve's proxy."""

    @property
    def refused(self) -> bool:
        """The service judged the turn itself: sending it again would be answered the same."""
        return self.status is not None and self.status not in AGAIN and self.ours

    def __str__(self) -> str:
        return self.reason if self.status is None else f"HTTP {self.status}: {self.reason}"


class RemoteEngineStage(Stage):
    name = "engine"
    inputs = (Turn,)

    def __init__(self, config: PredictorConfig, session: str,
                 names: dict[str, str] | None = None) -> None:
        """`session`: the conversation's id at the service (its cache and turn log);
        `names`: the players' names (`perception.names`), for the service's predictor."""
        assert config.url is not None and not bridged(config), "needs an http(s) engine.url"
        self.config, self.session, self.url, self.names = config, session, config.url, names
        self.http: aiohttp.ClientSession | None = None
        self.down = False
        """No answer for a whole `url_timeout_s`: one try per turn until it answers."""
        token = config.token or os.environ.get(TOKEN_ENV)
        self.headers = {HEADER: session, "Content-Type": "application/json",
                        **({"Authorization": f"Bearer {token}"} if token else {})}

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=self.config.url_timeout_s))
        # Anything but a refused connection says a service is there.
        try:
            status = await self._knock()
        except (TimeoutError, aiohttp.ClientError) as e:
            await self.http.close()
            raise UserError(f"--engine {self.url}: no engine service answers there ({e}); "
                            "start one with socialstream serve") from None
        if status == 401:
            await self.http.close()
            raise UserError(f"--engine {self.url}: the service wants a token it knows; set "
                            f"{TOKEN_ENV} (or engine.token) to one it was started with")

    def reset(self) -> None:
        """New people at the table: the next turns are a new conversation at the service."""
        from stream.events import new_run

        base = self.session.rpartition("/")[0] or self.session
        self.session = f"{base}/{new_run()}"
        self.headers[HEADER] = self.session

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Turn):
            return ()
        assert self.http is not None, "start() opens the connection"
        taken = key_frames(item, self.config.frames_per_turn)
        body = json.dumps(turn_to_json(taken, self.names)).encode()
        began = time.perf_counter()
        until = time.monotonic() + self.config.url_timeout_s
        while True:
            problem = await self._post(body)
            if isinstance(problem, dict):
                if self.down:
                    log.warning("engine service %s answers again", self.url)
                self.down = False
                return (prediction_from_event(problem, item, time.perf_counter() - began),)
            if problem.refused:
                log.warning("engine service %s: turn %d refused (%s); the turn goes on "
                            "without the engine's scores", self.url, item.index, problem)
                return ()
            if self.down or time.monotonic() + RETRY_S > until:
                if not self.down:
                    log.warning("engine service %s: turn %d got no answer in %.0f s (%s); "
                                "turns go on without the engine's scores, one try each, "
                                "until it answers", self.url, item.index,
                                self.config.url_timeout_s, problem)
                self.down = True
                return ()
            await asyncio.sleep(RETRY_S)

    async def _knock(self, within_s: float | None = None) -> int:
        """The status of a request without a session id, which a live service answers at
        once whatever it computes (400, or 401 to a token it does not know); TimeoutError
        or aiohttp.ClientError when none comes (within `within_s`, default the session's
        timeout)."""
        assert self.http is not None
        headers = {k: v for k, v in self.headers.items() if k != HEADER}
        wait = {} if within_s is None else {"timeout": aiohttp.ClientTimeout(total=within_s)}
        async with self.http.post(self.url, data=b"{}", headers=headers, **wait) as response:
            await response.read()
            return response.status

    async def _post(self, body: bytes) -> dict[str, Any] | Failure:
        """The prediction event, or what went wrong. While the service is down, a quick
        knock first (it answers one without a session at once, whatever it computes): a
        hung service costs a turn `KNOCK_S`, not `url_timeout_s`."""
        assert self.http is not None
        if self.down:
            try:
                await self._knock(min(KNOCK_S, self.config.url_timeout_s))
            except (TimeoutError, aiohttp.ClientError) as e:
                return Failure(str(e) or type(e).__name__)
        try:
            async with self.http.post(self.url, data=body, headers=self.headers) as response:
                if response.status == 200:
                    return await response.json()
                text = await response.text()
                return Failure(text[:200], response.status, ours=_service_error(text))
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


def _service_error(text: str) -> bool:
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and "error" in data
