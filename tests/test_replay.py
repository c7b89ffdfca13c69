"""The replay pipeline end to end on the demo clip."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import jsonschema

from pipelines.bench.words import normalise
from pipelines.config import load_config
from pipelines.run.replay import Collect, build_replay, run_replay
from stream.events import dumps, turn_event, turn_schema
from stream.frames import Item, PerceivedFrame, Prediction, Transcribed, Turn, Word
from stream.runtime import Stage
from stream.sinks.jsonl import JsonlSink
from tests.conftest import PREDICTION, ROOT, SHORT_TURNS, TURN, events_of
from tests.media import tone_track, write_media

DUO = ROOT / "examples" / "duo.mp4"


def replay_events(media: Path, tmp_path: Path, schema: str | None = TURN,
                  yaml: str | None = None, **overrides) -> list[dict]:
    out = tmp_path / f"events-{len(list(tmp_path.iterdir()))}.jsonl"
    path = None
    if yaml is not None:
        path = tmp_path / f"config-{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(yaml)
    config = load_config(path, overrides)
    replay = build_replay(str(media), config, [JsonlSink("test", out)])
    asyncio.run(run_replay(replay))
    return events_of(out.read_text(), schema)


def test_one_valid_event_per_utterance_close_to_the_truth(demo: Path, truth: dict,
                                                          tmp_path: Path) -> None:
    events = replay_events(demo, tmp_path)
    schema = turn_schema()
    for event in events:
        jsonschema.validate(event, schema)
    assert len(events) == len(truth["turns"])
    config = load_config()
    tolerance = config.vad.frame_s + config.vad.hangover_s
    for event, turn in zip(events, truth["turns"], strict=True):
        assert event["text"] == turn["text"]
        assert event["origin"] == "speech"
        assert abs(event["start"] - turn["start"]) <= tolerance
        assert abs(event["end"] - turn["end"]) <= tolerance
        assert event["emitted_at"] <= turn["end"] + tolerance + 0.15  # webrtcvad's own lag
        times = [k["t"] for k in event["keyframes"]]
        assert all(turn["start"] - tolerance <= k <= event["end"] for k in times)
        assert len(times) >= 2 * (turn["end"] - turn["start"]) - 1
        assert event["speaker"] == turn["speaker"], "the active speaker of every turn"
        assert all(len(k["players"]) == 3 for k in event["keyframes"])


def test_paced_and_fast_replays_give_identical_events(short_demo: Path, tmp_path: Path
                                                      ) -> None:
    fast = replay_events(short_demo, tmp_path, schema=None)
    # Light-ASD may not keep up with 4x on this CPU; pacing alone is what is compared, so
    # it never gives way to mouth motion here (test_light_asd.py tests that it does).
    paced = replay_events(short_demo, tmp_path, schema=None,
                          source={"realtime": True, "speed": 4.0},
                          yaml="perception:\n  speaker:\n    fallback_lag_s: null\n")
    assert sum(e["schema"] == PREDICTION for e in fast) == SHORT_TURNS
    # A prediction's latency_s is wall clock (its compute): the one field that may differ.
    wall = {"latency_s"}
    assert ([dumps({k: v for k, v in e.items() if k not in wall}) for e in paced]
            == [dumps({k: v for k, v in e.items() if k not in wall}) for e in fast])


def test_small_queues_and_decimated_video_still_lose_nothing(short_demo: Path,
                                                             tmp_path: Path) -> None:
    events = replay_events(short_demo, tmp_path, queues={"size": 1}, source={"video_fps": 15})
    assert len(events) == SHORT_TURNS and all(e["keyframes"] for e in events)


def test_audio_only_and_video_only_inputs(tmp_path: Path) -> None:
    voice = write_media(tmp_path / "voice.m4a", video=False,
                        audio=tone_track([(0.5, 1.5), (2.5, 3.2)], 4.0))
    events = replay_events(voice, tmp_path, recognizer={"enabled": False})  # tones, no words
    assert [e["keyframes"] for e in events] == [[], []]
    silent = write_media(tmp_path / "silent.mp4", duration=3.0)
    (tmp_path / "silent.jsonl").write_text('{"start": 0.5, "end": 1.5, "text": "hi"}\n')
    events = replay_events(silent, tmp_path)
    assert [(e["text"], e["origin"]) for e in events] == [("hi", "transcript")]
    # 25 fps: the first frame at or after each tick; flat grey pictures hold no faces
    assert events[0]["keyframes"] == [{"t": 0.52, "players": []}, {"t": 1.0, "players": []}]
    assert events[0]["speaker"] is None and events[0]["speaker_confidence"] == 0.0


def test_collect_keeps_turn_objects_with_frames(short_demo: Path) -> None:
    collect = Collect()
    replay = build_replay(str(short_demo), load_config(), [collect])
    report = asyncio.run(run_replay(replay))
    assert len(collect.turns) == SHORT_TURNS
    assert collect.turns[0].keyframes[0].image.shape == (480, 640, 3)
    assert report.real_time_factor is not None and not report.interrupted
    assert report.metrics["vad"]["items_in"] > 0
    assert turn_event(collect.turns[0], "s", run="r1")["id"] == "s/r1/turn/0"


def test_without_a_transcript_whisper_gives_the_turns_their_words(demo: Path) -> None:
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        bare = Path(shutil.copy(demo, Path(folder) / "demo.mp4"))  # no transcript beside it
        collect = Collect()
        replay = build_replay(str(bare), load_config(None, {"perception": {"enabled": False},
                                                            "predictions": {"predictor":
                                                                            "none"}}),
                              [collect])
        heard: list[Item] = []
        replay.pipeline.observe(lambda node, item: heard.append(item) if node == "asr" else None)
        asyncio.run(run_replay(replay))
    words = [item for item in heard if isinstance(item, Word)]
    progress = [item for item in heard if isinstance(item, Transcribed)]
    assert len(progress) == 12, "one decode per turn's speech"
    assert progress[-1].until >= collect.turns[-1].end
    said = " ".join(normalise(w.text) for w in words)
    for phrase in ("did you finish the map for our trip", "the shortcut", "here it is"):
        assert phrase in said
    turns = collect.turns
    assert len(turns) == 12 and all(t.words_from == "asr" and t.words for t in turns)
    assert [w for t in turns for w in t.words] == words, "every word, in its turn"
    assert "map" in normalise(turns[0].text).split()


class _SlowEngine(Stage):
    """Stands in for the engine: every prediction takes 3 s of wall time (in a thread)."""

    name = "engine"
    inputs = (Turn,)

    def __init__(self, config: object, names: object = None, *, attention: bool = False) -> None:
        pass

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Turn):
            return ()
        await asyncio.to_thread(time.sleep, 3.0)
        return (Prediction(pts=item.pts, turn=item.index, start=item.start, end=item.end,
                           speaker=None, answers=(), latency_s=3.0),)


class _Arrivals(Stage):
    """A sink like the MQTT one (turns, per-frame speakers, predictions) noting wall times."""

    name = "arrivals"
    inputs = (Turn, PerceivedFrame, Prediction)

    def __init__(self) -> None:
        self.seen: list[tuple[Item, float]] = []

    async def process(self, item: Item) -> Sequence[Item]:
        self.seen.append((item, time.monotonic()))
        return ()


def test_a_slow_engine_delays_only_predictions(monkeypatch) -> None:
    import pipelines.run.replay

    monkeypatch.setattr(pipelines.run.replay, "EngineStage", _SlowEngine)
    sink = _Arrivals()
    # Mouth motion: what is tested is that the engine holds nothing up. Light-ASD alone may
    # run near real time on a slow CPU (up to fallback_lag_s behind), which is its own test.
    config = load_config(None, {"source": {"realtime": True, "speed": 1.0},
                                "engine": {"model": "slow"},
                                "perception": {"speaker": {"model": "mouth"}}})
    replay = build_replay(str(DUO), config, [sink])
    asyncio.run(run_replay(replay))
    due = replay.media.pacer.wall_time
    turns = [(i, t) for i, t in sink.seen if isinstance(i, Turn)]
    frames = [(i, t) for i, t in sink.seen if isinstance(i, PerceivedFrame)]
    predictions = [(i, t) for i, t in sink.seen if isinstance(i, Prediction)]
    # Turns and per-frame speakers arrive when the media says, though every prediction
    # takes 3 s (13 s of media: the engine ends up seconds behind).
    assert max(t - due(i.pts) for i, t in turns) < 0.5
    assert max(t - due(i.pts) for i, t in frames) < 0.5
    assert max(t - due(i.pts) for i, t in predictions) > 3.0
    # Nothing dropped on the way (the per-frame edge keeps the newest only when it lags).
    assert len(turns) == len(predictions) == 5 and len(frames) == 394
    # Each prediction still follows its own turn.
    order = [(type(i).__name__, i.index if isinstance(i, Turn) else i.turn)
             for i, _ in sink.seen if not isinstance(i, PerceivedFrame)]
    assert all(order.index(("Turn", n)) < order.index(("Prediction", n)) for n in range(5))
