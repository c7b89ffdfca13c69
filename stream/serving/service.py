"""The engine as a service on Ray Serve: replicas each hold the model and a `SessionPool`,
and a session's turns go to the replica that has its cache.

Session affinity is Serve's model multiplexing keyed by session id: the "model" a
replica loads for an id is that session's place in its pool, so Serve routes a
session's turns to a replica that already holds it, and spreads new sessions over the
replicas. All replicas share one `TurnLog` folder (a local disk for one machine, a
shared file system for a cluster): a replica that dies loses nothing, the session's
next turn goes to another replica, which rebuilds it from the log and answers as the
lost one would have (a test kills a replica mid-conversation).

Requests are HTTP POSTs of one turn (`stream/serving/wire.py`, with the edge's player
names) with the session id in the `serve_multiplexed_model_id` header and, when the
service has tokens, `Authorization: Bearer TOKEN`; a session belongs to its token (the
same id under another token is another conversation). The answer is the prediction
event (`socialstream.prediction/*`) plus `replica` and `pid`, or an error:

- 400: not a turn (the reason names the field), or no or a bad session id;
- 401: no token, or not one of the service's;
- 409: the session cannot take the turn (`TurnConflict`: late, or other words under an
  index it took); sending it again is refused again;
- 413: the body is larger than the service takes;
- 507: no room: the turn log's disk is full, or the service holds `max_sessions`;
- 500: the engine failed on the turn (the reason says how); the session is rebuilt
  from the log for the next one.

A replica computes one turn at a time: the pool's lock is taken by the thread that does
the work, so a request cancelled while it waits (a client that went away) cannot let a
second turn into the pool beside the first.
Ray is an extra: `pip install 'socialstream[serve]'`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.engine.config import PredictorConfig
from stream.events import prediction_event
from stream.frames import Turn

if TYPE_CHECKING:
    from starlette.requests import Request

    from stream.serving.pool import SessionPool

log = logging.getLogger(__name__)
HEADER = "serve_multiplexed_model_id"
TOKEN_ENV = "SOCIALSTREAM_ENGINE_TOKEN"
"""Where an edge, or `serve`, finds the bearer token when none is configured."""
PRUNE_EVERY_S = 60.0
APP = "socialstream-engine"


MAX_BODY = 32 * 2**20
"""Bytes of one request (a turn with two 4K key frames is a few MB)."""
MAX_SESSIONS = 1000


class EngineService:
    """One model and the sessions it serves; what each replica runs."""

    def __init__(self, config: dict[str, Any], budget_bytes: int, log_dir: str,
                 keep_s: float = 24 * 3600.0, *, tokens: tuple[str, ...] = (),
                 max_sessions: int = MAX_SESSIONS, max_body: int = MAX_BODY) -> None:
        """`keep_s`: a session without a turn for this long is forgotten, its log removed
        (checked at most once a minute, as turns come). `tokens`: the bearer tokens a
        request must carry one of (none: no credential, for a service on loopback)."""
        from stream.engine.loading import load_backend
        from stream.serving.pool import SessionPool
        from stream.serving.turnlog import TurnLog

        self.config = PredictorConfig(**config)
        assert self.config.model is not None, "the engine service needs engine.model"
        backend = load_backend(self.config.model, device=self.config.device,
                               pixels=self.config.pixels, prompting=self.config.prompting,
                               video=self.config.video)
        self.log = TurnLog(Path(log_dir))
        self.pool: SessionPool = SessionPool(backend, self.config, budget_bytes, log=self.log)
        self.pool.limit = max_sessions
        self.keep_s, self.tokens = keep_s, tokens
        self.max_body = max_body
        self._pruned_at = float("-inf")

    def turn(self, session: str, turn: Turn, names: dict[str, str] | None = None,
             scope: str = "") -> dict[str, Any]:
        """The prediction event of the session's turn; `scope` keeps the sessions of one
        token apart from another's (`token_scope`)."""
        self.prune()
        return prediction_event(self.pool.turn(scope + session, turn, names, scope=scope),
                                session)

    def prune(self) -> None:
        """Sessions idle for `keep_s` go, looked for at most once a minute."""
        now = time.monotonic()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            self.pool.prune(self.keep_s)

    def session(self, session: str | None, authorization: str | None
                ) -> str | tuple[int, dict[str, Any]]:
        """The scope of the request's session (`token_scope` of its token; "" without
        tokens), or the error to answer."""
        from stream.serving.turnlog import check_session

        scope = ""
        if self.tokens:
            scheme, _, value = (authorization or "").partition(" ")
            given = value.strip().encode()
            if scheme.lower() != "bearer" \
                    or not any(hmac.compare_digest(given, t.encode()) for t in self.tokens):
                return 401, {"error": "no valid token: send Authorization: Bearer TOKEN, "
                                      "a token the service was started with"}
            scope = token_scope(given.decode())
        if not session:
            return 400, {"error": f"no session id: set the {HEADER} header"}
        try:
            check_session(session)
        except ValueError as e:
            return 400, {"error": f"session id: {e}"}
        return scope

    def too_large(self, size: int) -> tuple[int, dict[str, Any]] | None:
        """413 for a body of `size` bytes beyond `max_body`."""
        if size <= self.max_body:
            return None
        return 413, {"error": f"the body has {size:,} bytes, more than the "
                              f"{self.max_body:,} the service takes"}

    async def answer(self, session: str, scope: str, body: bytes
                     ) -> tuple[int, dict[str, Any]]:
        """The status and JSON answer to one turn of `session` (checked, with its scope, by
        `session`)."""
        from stream.serving.pool import SessionsFull, TurnConflict
        from stream.serving.turnlog import TurnLogFull
        from stream.serving.wire import NotATurn, TurnWire, decode_turn, parse_turn

        refused = self.too_large(len(body))
        if refused is not None:
            return refused

        def read() -> tuple[TurnWire, Turn]:
            wire = parse_turn(body, self.config.frames_per_turn)
            return wire, decode_turn(wire)

        try:
            wire, turn = await asyncio.to_thread(read)
        except NotATurn as e:
            return 400, {"error": f"not a turn ({e})"}
        try:
            # The thread holds the pool's lock: cancelling this coroutine (a client gone)
            # leaves the lock held until the work is done.
            return 200, await asyncio.to_thread(self.turn, session, turn, wire.names, scope)
        except TurnConflict as e:
            return 409, {"error": str(e)}
        except (TurnLogFull, SessionsFull) as e:
            return 507, {"error": str(e)}
        except Exception as e:
            log.exception("session %r: turn %d failed", session, turn.index)
            return 500, {"error": f"the engine failed on turn {turn.index} "
                                  f"({type(e).__name__}: {e})"}


def token_scope(token: str) -> str:
    """What a token's sessions are kept under: a digest, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:16] + "."


def deployment(config: dict[str, Any], budget_bytes: int, log_dir: str, *,
               keep_s: float = 24 * 3600.0, replicas: int = 1, sessions_per_replica: int = 64,
               cpus_per_replica: float = 1.0, max_replicas: int | None = None,
               tokens: tuple[str, ...] = (), max_sessions: int = MAX_SESSIONS,
               max_body: int = MAX_BODY) -> Any:
    """The Serve application: `replicas` copies of `EngineService` behind one route, or
    from `replicas` up to `max_replicas` as the load asks (a replica answers one turn at
    a time, so Serve adds one while turns wait)."""
    from ray import serve
    from starlette.responses import JSONResponse

    scale: dict[str, Any] = {"num_replicas": replicas}
    if max_replicas is not None and max_replicas > replicas:
        scale = {"num_replicas": "auto", "autoscaling_config": {
            "min_replicas": replicas, "initial_replicas": replicas,
            "max_replicas": max_replicas, "target_ongoing_requests": 1,
            "upscale_delay_s": 5.0, "downscale_delay_s": 60.0}}

    @serve.deployment(name="engine", ray_actor_options={"num_cpus": cpus_per_replica},
                      **scale)
    class Engine:
        def __init__(self) -> None:
            self.service = EngineService(config, budget_bytes, log_dir, keep_s,
                                         tokens=tokens, max_sessions=max_sessions,
                                         max_body=max_body)

        @serve.multiplexed(max_num_models_per_replica=sessions_per_replica)
        async def session(self, session_id: str) -> str:
            # Affinity only: the pool holds (and evicts, rebuilds) the session itself.
            return session_id

        async def __call__(self, request: Request) -> JSONResponse:
            session = serve.get_multiplexed_model_id()
            scope = self.service.session(session, request.headers.get("authorization"))
            if isinstance(scope, tuple):
                status, answer = scope
                return JSONResponse(answer, status_code=status, headers=(
                    {"WWW-Authenticate": "Bearer"} if status == 401 else None))
            length = request.headers.get("content-length", "")
            refused = self.service.too_large(int(length)) if length.isdigit() else None
            if refused is not None:
                return JSONResponse(refused[1], status_code=refused[0])
            await self.session(session)
            status, answer = await self.service.answer(session, scope, await request.body())
            if status == 200:
                answer = {**answer, "replica": serve.get_replica_context().replica_id.unique_id,
                          "pid": os.getpid()}
            return JSONResponse(answer, status_code=status)

    return Engine.bind()
