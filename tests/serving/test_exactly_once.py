"""One turn index, one answer: replicas sharing a turn log, turns sent side by side, and a
request cancelled while its turn is being computed, all on real threads."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from stream.engine.backends import TextBackend
from stream.engine.config import PredictorConfig
from stream.engine.predict import Predictor
from stream.frames import Prediction, Turn
from stream.serving.pool import SessionPool, TurnConflict
from stream.serving.turnlog import TurnLog
from tests.tiny import LINES, SPEAKERS, scene_turn

NOT_HAPPENING_S = 1.0
"""How long a check waits for something that must not happen (a second thread inside the
pool) before taking it that it does not: it bounds the wait, it is not a deadline."""


def _scores(prediction: Prediction) -> list[tuple[str, dict[str, float]]]:
    return [(a.task, a.scores) for a in prediction.answers]


class _Gate:
    """Wraps a function so that each call says it entered and waits to be let through;
    counts the calls inside at once."""

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner, self.inside, self.most = inner, 0, 0
        self.entered = threading.Semaphore(0)
        self.through = threading.Semaphore(0)
        self._count = threading.Lock()

    def open(self) -> None:
        """Let every call through from now on (also when a check failed)."""
        for _ in range(1000):
            self.through.release()

    def __call__(self, *args: Any) -> Any:
        with self._count:
            self.inside += 1
            self.most = max(self.most, self.inside)
        self.entered.release()
        self.through.acquire()
        try:
            return self.inner(*args)
        finally:
            with self._count:
                self.inside -= 1


def test_a_retry_at_another_replica_mid_turn_is_taken_once(
        llama: TextBackend, tmp_path: Path) -> None:
    """Replica A is computing turn 1 when the edge's retry of it reaches replica B (they
    share the log). B waits for A, finds turn 1 logged and answers it as A did; the log
    holds it once (it held [0, 1, 1], and every rebuild took turn 1 twice)."""
    config = PredictorConfig(model="tiny")
    a, b = (SessionPool(llama, config, 1 << 30, log=TurnLog(tmp_path)) for _ in range(2))
    turns = [scene_turn(k, SPEAKERS[k], LINES[k]) for k in range(3)]
    alone = Predictor(llama, config)
    expected = [_scores(alone.turn(t)) for t in turns]
    a.turn("s", turns[0])
    gate = _Gate(Predictor.take)
    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(2) as threads:
        patch.setattr(Predictor, "take", lambda self, turn: gate(self, turn))
        first = threads.submit(a.turn, "s", turns[1])
        gate.entered.acquire()  # A is inside turn 1
        retry = threads.submit(b.turn, "s", turns[1])
        try:
            # B must not get as far as taking the turn while A holds the session.
            assert not gate.entered.acquire(timeout=NOT_HAPPENING_S)
        finally:
            gate.open()
        answers = [first.result(), retry.result()]
    assert gate.most == 1
    assert [_scores(p) for p in answers] == [expected[1]] * 2
    assert [t.index for t in TurnLog(tmp_path).turns("s")] == [0, 1]
    assert _scores(b.turn("s", turns[2])) == expected[2]


def test_turns_sent_side_by_side_are_answered_or_refused_as_late_never_lost_silently(
        llama: TextBackend, tmp_path: Path) -> None:
    """Ten turns 0-9 of one session at once (ten threads). Each is taken in the order it
    gets the session, or refused as late (an index below one taken): no false "took
    other words", no index twice, and every turn answered is in the log, in order."""
    pool = SessionPool(llama, PredictorConfig(model="tiny"), 1 << 30, log=TurnLog(tmp_path))
    turns = [scene_turn(k, SPEAKERS[k % 4], LINES[k % 4]) for k in range(10)]

    def send(turn: Turn) -> int | str:
        try:
            return pool.turn("s", turn).turn
        except TurnConflict as e:
            return str(e)

    with ThreadPoolExecutor(10) as threads:
        results = list(threads.map(send, turns))
    answered = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, str)]
    logged = [t.index for t in TurnLog(tmp_path).turns("s")]
    assert logged == sorted(set(logged)) == sorted(answered)
    assert len(answered) + len(refused) == 10 and answered
    assert all("came after turn" in r and "in order" in r for r in refused), refused


async def test_a_cancelled_request_keeps_the_pool_until_its_turn_is_done(
        tmp_path: Path) -> None:
    """Serve cancels a handler whose client went away; its worker thread goes on inside
    the pool. The next request must wait for that thread, not only for the handler (two
    turns ran at once in a pool and cache that are not thread-safe)."""
    from stream.engine.synthetic import random_llama, word_tokenizer
    from stream.serving.service import EngineService
    from stream.serving.wire import turn_to_json

    tokenizer = word_tokenizer()
    random_llama(len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    service = EngineService({"model": str(tmp_path / "model")}, 2**30, str(tmp_path / "log"))
    gate = _Gate(service.pool._turn)
    service.pool._turn = gate  # type: ignore[method-assign]
    body = [turn_to_json(scene_turn(k, SPEAKERS[k], LINES[k])) for k in range(2)]
    encoded = [json.dumps(b).encode() for b in body]
    cancelled = asyncio.create_task(service.answer("s", "", encoded[0]))
    await asyncio.to_thread(gate.entered.acquire)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    second = asyncio.create_task(service.answer("s", "", encoded[1]))
    try:
        entered = await asyncio.to_thread(gate.entered.acquire, timeout=NOT_HAPPENING_S)
        assert not entered, "the second turn got into the pool beside the first"
    finally:
        gate.open()
    status, event = await second
    assert (status, event["turn"], gate.most) == (200, 1, 1)
    assert [t.index for t in service.log.turns("s")] == [0, 1]
