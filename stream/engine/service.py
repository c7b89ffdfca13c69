"""The engine as a service on Ray Serve: replicas each hold the model and a `SessionPool`,
and a session's turns go to the replica that has its cache.

Session affinity is Serve's model multiplexing keyed by session id: the "model" a
replica loads for an id is that session's place in its pool, so Serve routes a
session's turns to a replica that already holds it, and spreads new sessions over the
replicas. All replicas share one `TurnLog` folder (a local disk for one machine, a
shared file system for a cluster): a replica that dies loses nothing, the session's
next turn goes to another replica, which rebuilds it from the log and answers as the
lost one would have (a test kills a replica mid-conversation).

Requests are HTTP POSTs of one turn (`turn_to_json`) with the session id in the
`serve_multiplexed_model_id` header; the answer is the prediction event
(`socialstream.prediction/*`) plus `replica` and `pid`. A replica answers one turn at a
time (the pool is not thread-safe, and one model computes one turn at a time anyway).
Ray is an extra: `pip install 'socialstream[serve]'`.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.engine.config import PredictorConfig
from stream.events import prediction_event
from stream.frames import Turn

if TYPE_CHECKING:
    from starlette.requests import Request

HEADER = "serve_multiplexed_model_id"
PRUNE_EVERY_S = 60.0
APP = "socialstream-engine"


class EngineService:
    """One model and the sessions it serves; what each replica runs."""

    def __init__(self, config: dict[str, Any], budget_bytes: int, log_dir: str,
                 keep_s: float = 24 * 3600.0) -> None:
        """`keep_s`: a session without a turn for this long is forgotten, its log removed
        (checked at most once a minute, as turns come)."""
        from stream.engine.loading import load_backend
        from stream.engine.pool import SessionPool
        from stream.engine.turnlog import TurnLog

        self.config = PredictorConfig(**config)
        assert self.config.model is not None, "the engine service needs engine.model"
        backend = load_backend(self.config.model, device=self.config.device,
                               pixels=self.config.pixels, prompting=self.config.prompting,
                               video=self.config.video)
        self.log = TurnLog(Path(log_dir))
        self.pool = SessionPool(backend, self.config, budget_bytes, log=self.log)
        self.keep_s = keep_s
        self._pruned_at = float("-inf")

    def turn(self, session: str, turn: Turn) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            for idle in self.log.prune(self.keep_s):
                self.pool.forget(idle)
        return prediction_event(self.pool.turn(session, turn), session)


def deployment(config: dict[str, Any], budget_bytes: int, log_dir: str, *,
               keep_s: float = 24 * 3600.0, replicas: int = 1, sessions_per_replica: int = 64,
               cpus_per_replica: float = 1.0, max_replicas: int | None = None) -> Any:
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
            self.service = EngineService(config, budget_bytes, log_dir, keep_s)
            self.lock = asyncio.Lock()

        @serve.multiplexed(max_num_models_per_replica=sessions_per_replica)
        async def session(self, session_id: str) -> str:
            # Affinity only: the pool holds (and evicts, rebuilds) the session itself.
            return session_id

        async def __call__(self, request: Request) -> JSONResponse:
            from stream.engine.turnlog import turn_from_json

            session = serve.get_multiplexed_model_id()
            if not session:
                return JSONResponse({"error": f"no session id: set the {HEADER} header"},
                                    status_code=400)
            try:
                turn = turn_from_json(await request.json())
            except (ValueError, KeyError, TypeError) as e:
                return JSONResponse({"error": f"not a turn ({e})"}, status_code=400)
            await self.session(session)
            async with self.lock:
                try:
                    event = await asyncio.to_thread(self.service.turn, session, turn)
                except ValueError as e:  # a turn the session cannot take (pool.turn)
                    return JSONResponse({"error": str(e)}, status_code=409)
            replica = serve.get_replica_context().replica_id.unique_id
            return JSONResponse({**event, "replica": replica, "pid": os.getpid()})

    return Engine.bind()
