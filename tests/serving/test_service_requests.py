"""What the engine service answers to bad, hostile, oversized and unauthorised requests,
through the code its Ray deployment runs for every request (`EngineService.session`
and `EngineService.answer`)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from stream.engine.config import PredictorConfig
from stream.engine.loading import load_backend
from stream.engine.predict import Predictor
from stream.engine.synthetic import random_llama, word_tokenizer
from stream.frames import Turn
from stream.serving.service import EngineService
from stream.serving.wire import turn_to_json
from tests.tiny import scene_turn


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    tokenizer = word_tokenizer()
    random_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _service(model: Path, log: Path, **options: Any) -> EngineService:
    return EngineService({"model": str(model)}, 2**30, str(log), **options)


async def _ask(service: EngineService, session: str | None, body: bytes | dict[str, Any],
               authorization: str | None = None) -> tuple[int, dict[str, Any]]:
    scope = service.session(session, authorization)
    if isinstance(scope, tuple):
        return scope
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await service.answer(session or "", scope, raw)


def _body(turn: Turn | None = None, **changes: Any) -> dict[str, Any]:
    data = turn_to_json(turn or scene_turn(0, "P1", "Ben, did you finish the map?"))
    return {**data, **changes}


def _frame(**changes: Any) -> dict[str, Any]:
    return {**_body()["frames"][0], **changes}


def _view(**changes: Any) -> dict[str, Any]:
    return {**_body()["frames"][0]["views"][0], **changes}


def _huge_png() -> str:
    """A real PNG whose header says 10000x10000 (it would decode to 300 MB)."""
    _, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(png.tobytes())
    data[16:24] = struct.pack(">II", 10000, 10000)
    return base64.b64encode(bytes(data)).decode()


BAD = {
    "index Infinity": (b'{"index": Infinity}', "index"),
    "index 1e999": (b'{"index": 1e999}', "index"),
    "a deep array": (b"[" * 100_000, "the body"),
    "start NaN": (json.dumps(_body(start=float("nan"))).encode(), "start"),
    "an empty png": (_body(frames=[_frame(png="")]), "frames.0.png"),
    "a png that is not one": (_body(frames=[_frame(png="aGVsbG8=")]), "frames.0.png: not"),
    "a box of strings": (_body(frames=[_frame(views=[_view(box=["a", "b", 1, 2])])]),
                         "frames.0.views.0.box"),
    "a name that is an object": (_body(speaker_name={"a": 1}), "speaker_name"),
    "names that are a number": (_body(names=5), "names"),
    "a NaN vote": (_body(vote={"speaker": "P1", "confidence": float("nan"), "scores": {},
                               "cues": {}}), "vote.confidence"),
    "a text of 200,000 characters": (_body(text="word " * 40_000), "text"),
    "10000x10000 pixels": (_body(frames=[_frame(png=_huge_png())]), "more than"),
    "three key frames": (_body(frames=[_frame()] * 3), "the engine takes 2"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_a_bad_turn_is_400_with_the_reason_and_leaves_no_log(
        case: str, model: Path, tmp_path: Path) -> None:
    body, where = BAD[case]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, answer = await _ask(_service(model, tmp_path / "log"), "s", raw)
    assert status == 400 and answer["error"].startswith("not a turn"), answer
    assert where in answer["error"]
    assert not list((tmp_path / "log").glob("*.jsonl"))


@pytest.mark.parametrize(("session", "why"), [
    (None, "no session id"), ("x" * 300, "1 to 128 characters"),
    ("a\nb", "control characters")])
async def test_a_bad_session_id_is_400(session: str | None, why: str, model: Path,
                                       tmp_path: Path) -> None:
    status, answer = await _ask(_service(model, tmp_path), session, _body())
    assert status == 400 and why in answer["error"]


async def test_a_body_over_the_limit_is_413(model: Path, tmp_path: Path) -> None:
    service = _service(model, tmp_path, max_body=1000)
    status, answer = await _ask(service, "s", _body())
    assert status == 413 and "more than the 1,000 the service takes" in answer["error"]


async def test_sessions_beyond_the_limit_are_507_until_one_is_idle_long_enough(
        model: Path, tmp_path: Path) -> None:
    """Every edge run is a new session: a full service must make room by itself once
    sessions have been idle for keep_s (pruning only came with a turn that got through,
    so a full service refused every new session for ever)."""
    import os
    import time

    from stream.serving.service import PRUNE_EVERY_S

    service = _service(model, tmp_path, max_sessions=1, keep_s=3600)
    assert (await _ask(service, "a", _body()))[0] == 200
    status, answer = await _ask(service, "b", _body())
    assert status == 507 and "holds 1 sessions" in answer["error"]
    assert (await _ask(service, "a", _body(scene_turn(1, "P2", "Yes."))))[0] == 200
    hours_ago = time.time() - 7200
    os.utime(service.log._path("a"), (hours_ago, hours_ago))
    service._pruned_at -= PRUNE_EVERY_S  # a minute on: the next request looks again
    assert (await _ask(service, "b", _body()))[0] == 200
    assert service.log.sessions() == ["b"] and service.pool.resident() == ["b"]


async def test_a_token_is_needed_and_each_tokens_sessions_are_its_own(
        model: Path, tmp_path: Path) -> None:
    """Without a valid token, 401 (a non-ASCII one too, which was a 500). With one, the
    session id names a conversation of that token only: another token's "a" is another
    conversation, and cannot be probed, written or blocked through the shared id."""
    service = _service(model, tmp_path, tokens=("one", "two"))
    for authorization in (None, "Bearer three", "Bearer é", "one"):
        status, answer = await _ask(service, "a", _body(), authorization)
        assert status == 401 and "Authorization: Bearer TOKEN" in answer["error"]
    assert (await _ask(service, "a", _body(), "Bearer one"))[0] == 200
    other = _body(scene_turn(0, "P2", "Other words as turn 0."))
    status, answer = await _ask(service, "a", other, "Bearer two")
    assert status == 200 and answer["session"] == "a"
    assert (await _ask(service, "a", other, "Bearer one"))[0] == 409
    assert len(service.log.sessions()) == 2
    assert not any("one" in s or "two" in s for s in service.log.sessions())


async def test_late_and_conflicting_turns_are_409_with_the_reason(
        model: Path, tmp_path: Path) -> None:
    service = _service(model, tmp_path)
    assert (await _ask(service, "s", _body(scene_turn(5, "P1", "Hello.")), None))[0] == 200
    status, answer = await _ask(service, "s", _body(scene_turn(3, "P1", "Earlier.")))
    assert status == 409 and "turn 3 came after turn 5" in answer["error"]
    status, answer = await _ask(service, "s", _body(scene_turn(5, "P1", "Other words.")))
    assert status == 409 and "took other words as turn 5" in answer["error"]


async def test_the_service_names_people_as_the_edge_does(model: Path, tmp_path: Path
                                                         ) -> None:
    """A turn named only by its transcript ("Ben"): the edge's names make it P2, in
    process and at the service alike."""
    names = {"P1": "Ann", "P2": "Ben"}
    turn = replace(scene_turn(0, "P1", "I did most of it, honestly."), vote=None,
                   speaker_name="Ben")
    here = Predictor(load_backend(str(model)), PredictorConfig(model=str(model)), names)
    expected = here.turn(turn).speaker
    status, answer = await _ask(_service(model, tmp_path), "s", turn_to_json(turn, names))
    assert status == 200 and answer["speaker"] == expected == "P2"


async def test_a_full_disk_is_507_and_the_turn_can_come_again(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from stream.serving import turnlog

    service = _service(model, tmp_path)

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(turnlog.os, "write", full)
    status, answer = await _ask(service, "s", _body())
    assert status == 507 and "disk is full" in answer["error"]
    monkeypatch.undo()
    status, answer = await _ask(service, "s", _body())
    assert status == 200 and answer["turn"] == 0


def _many_objects(count: int) -> bytes:
    return b'{"index": 0, "junk": [' + b",".join([b"{}"] * count) + b"]}"


BAD_TOO = {
    "60,000 empty objects": (_many_objects(60_000), "JSON elements"),
    "a 310-digit coordinate": (_body(frames=[_frame(views=[_view(box=[10**310, 0, 1, 1])])]),
                               "frames.0.views.0.box"),
    "a box the wrong way round": (_body(frames=[_frame(views=[_view(box=[100, 0, 50, 10])])]),
                                  "x1 must not be left of x0"),
    "a player id with a superscript digit": (
        _body(frames=[_frame(views=[_view(player="P²")])]), "frames.0.views.0.player"),
}


@pytest.mark.parametrize("case", list(BAD_TOO))
async def test_what_the_engine_cannot_take_is_400_not_500(case: str, model: Path,
                                                          tmp_path: Path) -> None:
    """Each was a 500 from deep inside the engine (an int too large for a float, PIL
    refusing the box, int("²")) or, for tiny elements, gigabytes parsed before any limit
    applied (a 30 MiB body of empty objects: +7 GB, 18 s)."""
    body, where = BAD_TOO[case]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, answer = await _ask(_service(model, tmp_path), "s", raw)
    assert status == 400 and where in answer["error"], answer


def test_a_key_frame_narrower_than_one_to_a_hundred_is_not_a_turn() -> None:
    from stream.serving.wire import NotATurn, _png

    _, png = cv2.imencode(".png", np.zeros((1, 2000, 3), np.uint8))
    with pytest.raises(NotATurn, match="2000x1 is narrower than 1:100"):
        _png(base64.b64encode(png.tobytes()).decode(), "frames.0.png")


async def test_the_session_limit_is_kept_under_concurrency_and_per_token(
        model: Path, tmp_path: Path) -> None:
    """Twelve new sessions at once with room for three: three admitted (the check ran
    outside any lock: 8 of 12 got in); and one token's sessions do not lock out
    another's."""
    service = _service(model, tmp_path, max_sessions=3, tokens=("alice", "bob"))
    statuses = await asyncio.gather(*(_ask(service, f"s{k}", _body(), "Bearer alice")
                                      for k in range(12)))
    assert sorted(status for status, _ in statuses) == [200] * 3 + [507] * 9
    assert (await _ask(service, "s0", _body(), "Bearer bob"))[0] == 200


async def test_a_new_session_that_fails_leaves_nothing_behind(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its conversation in the pool (with its names) and its lock file stayed for ever:
    1,500 failed sessions, 1,500 of each, never pruned nor counted."""
    import os
    import time

    from stream.serving.service import PRUNE_EVERY_S

    service = _service(model, tmp_path, keep_s=60)

    def broken(*args: Any) -> Any:
        raise RuntimeError("the engine failed")

    monkeypatch.setattr(Predictor, "take", broken)
    for k in range(3):
        assert (await _ask(service, f"gone{k}", _body()))[0] == 500
    monkeypatch.undo()
    assert service.pool.stats().sessions == 0
    hour_ago = time.time() - 3600
    for lock in tmp_path.glob(".*.lock"):
        os.utime(lock, (hour_ago, hour_ago))
    service._pruned_at -= PRUNE_EVERY_S
    assert (await _ask(service, "kept", _body()))[0] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kept.lock", "kept.turns.jsonl"]


async def test_pruning_skips_what_is_not_a_log_and_forgets_long_ids_too(
        model: Path, tmp_path: Path) -> None:
    """A folder named like a log made every prune a 500 and stopped it; a session kept
    under a digest of its long id was pruned on disk and kept in memory."""
    import os
    import time

    from stream.serving.service import PRUNE_EVERY_S

    (tmp_path / "someone.turns.jsonl").mkdir()
    service = _service(model, tmp_path, keep_s=60)
    long = "會議" * 60
    assert (await _ask(service, long, _body()))[0] == 200
    (path,) = [p for p in tmp_path.glob("*.turns.jsonl") if p.is_file()]
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    service._pruned_at -= PRUNE_EVERY_S
    assert (await _ask(service, "new", _body()))[0] == 200
    assert service.pool.resident() == ["new"] and service.pool.stats().sessions == 1
    assert (tmp_path / "someone.turns.jsonl").is_dir()
