"""Many conversations on one model: evicted sessions come back bit-identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stream.engine.backends import Backend, QwenVLBackend, TextBackend
from stream.engine.cache import cache_bytes
from stream.engine.config import PredictorConfig
from stream.engine.predict import Predictor
from stream.engine.session import Session
from stream.frames import Prediction
from stream.serving.pool import SessionPool
from stream.serving.turnlog import TurnLog, TurnLogError
from tests.tiny import scene_turn

LINES = ["Ben, did you finish the map for our trip?", "He did most of it, honestly.",
         "Then show me the shortcut, please.", "She knows the way better than you."]
SPEAKERS = ["P1", "P2", "P3", "P2"]


def _same_cache(a: Predictor, b: Predictor) -> bool:
    layers = zip(a.session.cache.layers, b.session.cache.layers, strict=True)
    return all(torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)
               for x, y in layers) and torch.equal(a.session.last_logits, b.session.last_logits)


def _scores(prediction: Prediction) -> list[tuple[str, dict[str, float]]]:
    return [(a.task, a.scores) for a in prediction.answers]


@pytest.mark.parametrize("backend_name", ["qwen", "llama"])
def test_an_evicted_session_comes_back_bit_identical(backend_name: str,
                                                     request: pytest.FixtureRequest) -> None:
    backend: Backend = request.getfixturevalue(backend_name)
    config = PredictorConfig(model="tiny")
    one = Predictor(backend, config)
    one.turn(scene_turn(0, "P1", LINES[0]))
    # Room for two sessions of this size, not three.
    pool = SessionPool(backend, config, budget_bytes=int(2.5 * cache_bytes(one.session.cache)))
    alone = {s: Predictor(backend, config) for s in "abc"}
    for k in range(len(LINES)):
        for s in "abc":
            turn = scene_turn(k, SPEAKERS[k], f"{LINES[k]} ({s})")
            served = pool.turn(s, turn)
            assert _scores(served) == _scores(alone[s].turn(turn)), (s, k)
            assert len(pool.resident()) <= 2 and pool.cached_bytes() <= pool.budget
    stats = pool.stats()
    assert stats.evictions > 0 and stats.rebuilds > 0, "round robin over 3 with room for 2"
    for s in pool.resident():
        held = pool.predictor(s)
        assert held is not None and _same_cache(held, alone[s])
    # A session that was evicted last comes back with exactly the cache it would have had.
    gone = next(s for s in "abc" if s not in pool.resident())
    pool.turn(gone, scene_turn(9, "P3", "And one more thing."))
    alone[gone].turn(scene_turn(9, "P3", "And one more thing."))
    held = pool.predictor(gone)
    assert held is not None and _same_cache(held, alone[gone])


def test_fifty_sessions_stay_inside_the_memory_budget(llama: TextBackend) -> None:
    config = PredictorConfig(model="tiny", frames_per_turn=1)
    probe = Predictor(llama, config)
    probe.turn(scene_turn(0, "P1", LINES[0]))
    budget = 6 * cache_bytes(probe.session.cache)
    pool = SessionPool(llama, config, budget_bytes=budget)
    for k in range(2):
        for s in range(50):
            pool.turn(f"cam{s}", scene_turn(k, SPEAKERS[k], LINES[k]))
            assert pool.cached_bytes() <= budget
    stats = pool.stats()
    assert stats.sessions == 50 and 1 < stats.resident <= 6
    # Round robin over more sessions than fit: each one's second turn found it evicted.
    assert (stats.rebuilds, stats.rebuilt_turns) == (50, 50)


def test_a_turn_that_fails_leaves_no_half_session(llama: TextBackend,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pool = SessionPool(llama, PredictorConfig(model="tiny"), budget_bytes=1 << 30)
    pool.turn("a", scene_turn(0, "P1", LINES[0]))

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory")

    with monkeypatch.context() as patch:  # the frames are in, then the utterance fails
        patch.setattr(Session, "append_utterance", fail)
        with pytest.raises(RuntimeError, match="out of memory"):
            pool.turn("a", scene_turn(1, "P2", LINES[1]))
    assert pool.resident() == []
    served = pool.turn("a", scene_turn(1, "P2", LINES[1]))
    reference = Predictor(llama, PredictorConfig(model="tiny"))
    reference.turn(scene_turn(0, "P1", LINES[0]))
    assert _scores(served) == _scores(reference.turn(scene_turn(1, "P2", LINES[1])))


def test_a_budget_must_be_positive(qwen: QwenVLBackend) -> None:
    with pytest.raises(ValueError, match="budget_bytes must be positive"):
        SessionPool(qwen, PredictorConfig(model="tiny"), budget_bytes=0)


def test_a_new_pool_over_the_turn_log_continues_every_conversation(
        qwen: QwenVLBackend, tmp_path: Path) -> None:
    """Failover: the first pool is dropped mid-conversation (a killed process); a second
    one over the same log answers the next turns exactly as an uninterrupted run."""
    config = PredictorConfig(model="tiny")
    first = SessionPool(qwen, config, budget_bytes=1 << 30, log=TurnLog(tmp_path / "log"))
    alone = {s: Predictor(qwen, config) for s in ("cam 1", "cam/2")}
    for k in range(2):
        for s in alone:
            turn = scene_turn(k, SPEAKERS[k], LINES[k])
            assert _scores(first.turn(s, turn)) == _scores(alone[s].turn(turn))
    del first
    second = SessionPool(qwen, config, budget_bytes=1 << 30, log=TurnLog(tmp_path / "log"))
    assert second.log is not None and second.log.sessions() == ["cam 1", "cam/2"]
    for k in range(2, 4):
        for s in alone:
            turn = scene_turn(k, SPEAKERS[k], LINES[k])
            assert _scores(second.turn(s, turn)) == _scores(alone[s].turn(turn)), (s, k)
    assert second.stats().rebuilds == 2 and second.stats().rebuilt_turns == 4
    for s in alone:
        held = second.predictor(s)
        assert held is not None and _same_cache(held, alone[s])
    # Only the key frames the engine takes are kept, losslessly.
    logged = second.log.turns("cam 1")
    assert [len(t.keyframes) for t in logged] == [2, 2, 2, 2]
    original = scene_turn(0, SPEAKERS[0], LINES[0])
    assert np.array_equal(logged[0].keyframes[1].image, original.keyframes[1].image)
    assert logged[0].views == original.views and logged[0].vote == original.vote
    second.forget("cam 1")
    assert second.log.sessions() == ["cam/2"]


def test_a_turn_log_where_nothing_can_be_written_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(TurnLogError, match="cannot keep the turn log there"):
        TurnLog(tmp_path / "file" / "log")


def test_pools_sharing_a_log_rebuild_a_session_another_one_moved_on(
        llama: TextBackend, tmp_path: Path) -> None:
    """Two replicas over one log, a session's turns alternating between them (routing is
    not strict): each notices the log grew under it and rebuilds before answering."""
    config = PredictorConfig(model="tiny")
    pools = [SessionPool(llama, config, budget_bytes=1 << 30, log=TurnLog(tmp_path))
             for _ in range(2)]
    alone = Predictor(llama, config)
    for k in range(len(LINES)):
        turn = scene_turn(k, SPEAKERS[k], LINES[k])
        assert _scores(pools[k % 2].turn("a", turn)) == _scores(alone.turn(turn)), k
    assert [p.stats().rebuilds for p in pools] == [1, 2]  # turn 2; turns 1 and 3


@pytest.mark.parametrize("logged", [False, True])
def test_a_turn_sent_again_is_answered_as_before_and_taken_once(
        llama: TextBackend, tmp_path: Path, logged: bool) -> None:
    """A replica that logged a turn and died before answering, or a reply lost on the way:
    the caller sends the turn again. It is answered as the first time and the
    conversation goes on as if it came once (taken twice, turn 2 would differ)."""
    config = PredictorConfig(model="tiny")

    def pool() -> SessionPool:
        return SessionPool(llama, config, budget_bytes=1 << 30,
                           log=TurnLog(tmp_path) if logged else None)

    turns = [scene_turn(k, SPEAKERS[k], LINES[k]) for k in range(len(LINES))]
    alone, served = Predictor(llama, config), pool()
    first = [_scores(alone.turn(turn)) for turn in turns]
    assert [_scores(served.turn("a", turn)) for turn in turns[:2]] == first[:2]
    if logged:
        served = pool()  # the replica that took turn 1 is gone; another one answers
    assert _scores(served.turn("a", turns[1])) == first[1]
    assert _scores(served.turn("a", turns[2])) == first[2]
    assert _scores(served.turn("a", turns[0])) == first[0], "an older turn, answered as before"
    assert _scores(served.turn("a", turns[3])) == first[3]
    if logged:
        assert [t.index for t in TurnLog(tmp_path).turns("a")] == [0, 1, 2, 3]
    # Turn 1 again is answered from turn 0 (the new replica keeps that session, now whole,
    # for turn 2), turn 0 again from nothing: one turn taken again in all. Before, the new
    # replica also rebuilt turns 0-1 first to learn that 1 was taken. The replica that
    # took turn 1 answers it again from the session in memory: nothing taken again (it
    # rebuilt the whole history under the pool's lock, 1.7 s for a turn of 120).
    assert served.stats().rebuilt_turns == (1 if logged else 0)
    with pytest.raises(ValueError, match="took other words as turn 3"):
        served.turn("a", scene_turn(3, SPEAKERS[3], "Other words under the same index."))


def test_the_service_forgets_sessions_idle_past_the_keep_time(tmp_path: Path) -> None:
    """Logs untouched for longer than keep_s go (file and pool), the others stay; checked at
    most once a minute."""
    import os
    import time

    from stream.engine.synthetic import random_llama, word_tokenizer
    from stream.serving.service import EngineService

    tokenizer = word_tokenizer()
    random_llama(len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    service = EngineService({"model": str(tmp_path / "model")}, 2**30, str(tmp_path / "log"),
                            keep_s=3600)
    for session in ("old", "recent"):
        service.turn(session, scene_turn(0, "P1", "Ben, did you finish the map?"))
    log = service.log
    hour_ago = time.time() - 3601
    os.utime(log._path("old"), (hour_ago, hour_ago))
    service.turn("recent", scene_turn(1, "P2", "He did most of it."))
    assert log.sessions() == ["old", "recent"], "pruned at most once a minute"
    service._pruned_at -= 60
    service.turn("recent", scene_turn(2, "P3", "Show me."))
    assert log.sessions() == ["recent"]
    assert service.pool.stats().sessions == 1 and service.pool.resident() == ["recent"]
    assert len(log.turns("recent")) == 3
