"""The engine as a stage: per-turn answers, prediction events, JSONL and MQTT output."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from stream.broker import MqttConfig
from stream.engine.backends import QwenVLBackend, TextBackend
from stream.engine.config import PredictorConfig
from stream.engine.evaluate import score_predictions
from stream.engine.predict import NOBODY, Predictor, pronouns, spread
from stream.events import prediction_event, prediction_schema
from stream.frames import Prediction, SpeakerVote
from stream.sinks.mqtt import MqttSink
from tests.conftest import SHORT_TURNS
from tests.tiny import scene_turn

ROOT = Path(__file__).resolve().parents[2]


def test_key_frames_are_spread_over_the_turn() -> None:
    assert spread(5, 2) == [0, 4] and spread(5, 3) == [0, 2, 4] and spread(2, 3) == [0, 1]
    assert spread(7, 0) == list(range(7)) and spread(0, 2) == [] and spread(4, 1) == [0]


def test_pronouns_are_found_once_each_in_order() -> None:
    assert pronouns("She does. Ask her about HER summer, you know") == ["she", "her", "you"]
    assert pronouns("Then show me the shortcut, please.") == []


def test_predictor_answers_each_task_with_the_best_scored_candidate(
        qwen: QwenVLBackend) -> None:
    predictor = Predictor(qwen, PredictorConfig(model="tiny"))
    first = predictor.turn(scene_turn(0, "P1", "Ben, did you finish the map for our trip?"))
    second = predictor.turn(scene_turn(1, "P2", "He did most of it, honestly."))
    assert [a.task for a in first.answers] == ["addressee", "pronoun", "mentioned"]
    assert [(a.task, a.target) for a in second.answers][1] == ("pronoun", "he")
    for prediction, speaker in ((first, "P1"), (second, "P2")):
        assert prediction.speaker == speaker
        for answer in prediction.answers:
            if answer.task == "mentioned":
                assert set(answer.scores) == {"P1", "P2", "P3", NOBODY}
            else:  # the speaker is never their own addressee or referent
                assert set(answer.scores) == {"P1", "P2", "P3"} - {speaker}
    # The questions left no trace: two turns of frames and utterances, nothing else.
    kinds = [s.kind for s in predictor.session.ledger.spans]
    assert kinds == ["system", "frame", "frame", "utterance", "frame", "frame", "utterance"]
    event = prediction_event(second, "s")
    jsonschema.validate(event, prediction_schema())
    assert event["pronouns"][0]["pronoun"] == "he" and event["id"] == "s/0/prediction/1"


def test_replay_with_a_real_model_writes_a_valid_prediction_after_each_turn(
        short_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "replay", str(short_demo),
         "--model", "smollm2", "--json", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    turns = [e for e in events if e["schema"] == "socialstream.turn/6"]
    predictions = [e for e in events if e["schema"] == "socialstream.prediction/3"]
    assert len(events) == 2 * SHORT_TURNS
    assert [e["turn"] for e in turns] == list(range(SHORT_TURNS))
    assert [e["turn"] for e in predictions] == list(range(SHORT_TURNS))
    # Predictions come when the model is done (turns never wait for it), each after its turn.
    assert all(events.index(t) < events.index(p) for t, p in zip(turns, predictions,
                                                                 strict=True))
    schema = prediction_schema()
    for turn, prediction in zip(turns, predictions, strict=True):
        jsonschema.validate(prediction, schema)
        assert prediction["turn"] == turn["turn"] and prediction["speaker"] == turn["speaker"]
        assert prediction["addressee"]["answer"] in {"P1", "P2", "P3"} - {turn["speaker"]}
    truth = json.loads((ROOT / "examples" / "demo.truth.json").read_text())
    truth["turns"] = truth["turns"][:SHORT_TURNS]  # the short demo's: "He" is the pronoun
    scores = score_predictions(predictions, truth)
    assert scores["addressee"][1] == SHORT_TURNS and scores["pronoun"][1] == 1
    assert scores["mentioned"][1] == SHORT_TURNS


async def test_predictions_are_spooled_for_the_prediction_topic(tmp_path) -> None:
    # A broker that is not there: the event waits in the spool under its topic.
    config = MqttConfig(url="mqtt://127.0.0.1:1", spool_dir=tmp_path, drain_timeout_s=0.1)
    sink = MqttSink(config, "demo")
    await sink.start()
    try:
        answer_free = Prediction(pts=3.0, turn=0, start=0.8, end=3.2, speaker="P1", answers=(),
                                 latency_s=0.1)
        await sink.process(answer_free)
        await asyncio.sleep(0)
        rows = sink.spool.peek()
        assert [r.topic for r in rows] == ["socialstream/demo/prediction"]
        assert json.loads(rows[0].payload)["schema"] == "socialstream.prediction/3"
    finally:
        await sink.stop()


def test_the_transcript_names_the_speaker_when_the_faces_cannot(qwen: QwenVLBackend) -> None:
    predictor = Predictor(qwen, PredictorConfig(model="tiny"), names={"P2": "Ben"})
    unsure = SpeakerVote(speaker=None, confidence=0.0, scores={}, cues={})
    turn = replace(scene_turn(0, "P1", "I did, yesterday."), vote=unsure, speaker_name="Ben")
    prediction = predictor.turn(turn)
    assert prediction.speaker == "P2"  # the name, mapped back to its player
    addressee = next(a for a in prediction.answers if a.task == "addressee")
    assert set(addressee.scores) == {"P1", "P3"}
    # A name no player carries stays a name; without a vote at all, the same.
    stranger = replace(scene_turn(1, "P1", "Hello there."), vote=None, speaker_name="Ann")
    assert predictor.turn(stranger).speaker == "Ann"
    # The face vote, when there is one, wins over the transcript.
    voted = replace(scene_turn(2, "P3", "Me too."), speaker_name="Ben")
    assert predictor.turn(voted).speaker == "P3"


def test_each_answer_is_the_candidate_the_model_scored_best(qwen: QwenVLBackend,
                                                           monkeypatch) -> None:
    predictor = Predictor(qwen, PredictorConfig(model="tiny"))
    asked: list[list[tuple[str, list[str]]]] = []

    def scored(questions):  # known scores: the best is always the second candidate
        asked.append([(q, list(c)) for q, c in questions])
        return [[-3.0, -0.5] + [-2.0] * (len(c) - 2) for _, c in questions]

    monkeypatch.setattr(predictor.session, "ask_many", scored)
    prediction = predictor.turn(scene_turn(0, "P2", "Ben, did you see her?"))
    candidates = {q: c for q, c in asked[0]}
    assert [(a.task, a.target, a.answer) for a in prediction.answers] == [
        ("addressee", None, "P3"), ("pronoun", "you", "P3"), ("pronoun", "her", "P3"),
        ("mentioned", None, "P2")]
    for answer in prediction.answers:
        assert list(answer.scores) == candidates[answer.question]
        assert answer.scores[answer.answer] == -0.5


def test_a_turn_of_twelve_thousand_words_is_cut_and_the_session_goes_on(
        llama: TextBackend, caplog: pytest.LogCaptureFixture) -> None:
    """One transcript line (or MQTT inbox message) that long stopped the whole run: the
    context budget could not hold it. The engine takes its first and last 100 words."""
    predictor = Predictor(llama, PredictorConfig(model="tiny", max_positions=4096))
    predictor.turn(scene_turn(0, "P1", "Ben, did you finish the map for our trip?"))
    long = " ".join(["he walked and talked"] * 3000)
    prediction = predictor.turn(scene_turn(1, "P2", f"Ann, {long} and you?"))
    assert next(a.task for a in prediction.answers) == "addressee"
    assert sum(a.task == "pronoun" for a in prediction.answers) <= 100
    assert "turn 1 has 12003 words; the engine takes its first and last 100" in caplog.text
    after = predictor.turn(scene_turn(2, "P3", "Then show me the shortcut, please."))
    assert after.speaker == "P3"


async def test_a_reset_gives_the_engine_a_new_session(tmp_path: Path) -> None:
    """New people at the table: the next turn goes into a new session (the old group's
    words stayed in the cache), in process and at a service."""
    from stream.engine.predict import EngineStage
    from stream.engine.synthetic import random_llama, word_tokenizer
    from stream.serving.remote import RemoteEngineStage
    from stream.serving.service import HEADER

    tokenizer = word_tokenizer()
    random_llama(len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    stage = EngineStage(PredictorConfig(model=str(tmp_path)))
    await stage.start()
    await stage.process(scene_turn(0, "P1", "Ben, did you finish the map for our trip?"))
    await stage.process(scene_turn(1, "P2", "He did most of it, honestly."))
    stage.reset()
    await stage.process(scene_turn(2, "P1", "Then show me the shortcut, please."))
    assert stage.predictor is not None
    kinds = [s.kind for s in stage.predictor.session.ledger.spans]
    assert kinds.count("utterance") == 1
    remote = RemoteEngineStage(PredictorConfig(url="http://127.0.0.1:1/"), "clip/r1")
    remote.reset()
    assert remote.session.startswith("clip/") and remote.session != "clip/r1"
    assert remote.headers[HEADER] == remote.session


def test_a_turn_of_words_without_spaces_is_cut_too(llama: TextBackend,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """"he,he,he,..." is one word of 12,000 tokens: cut by its characters as well."""
    predictor = Predictor(llama, PredictorConfig(model="tiny", max_positions=4096))
    predictor.turn(scene_turn(0, "P1", ",".join(["he"] * 6000)))
    assert "turn 0 has 17999 characters in its words; the engine takes its first and " \
        "last 1200" in caplog.text
