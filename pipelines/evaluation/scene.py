"""`socialstream eval MEDIA`: replay a scene that has ground truth (`MEDIA.truth.json`)
and score the predictions made after each of its turns, and the turns' words
(`words.py`).

With `asr`, the scene's transcript sidecar is left unread and the words are recognised
from the audio, so that the same truth scores the recogniser.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.config import ReplayConfig, load_config
from pipelines.evaluation.items import wilson
from pipelines.evaluation.words import WordScores, percentiles, score_words, word_latencies
from pipelines.run.replay import Collect, Replay, ReplayReport, build_replay, run_replay
from stream.engine.evaluate import score_predictions
from stream.errors import UserError
from stream.events import prediction_event, turn_event
from stream.frames import Prediction, Turn
from stream.runtime import Stage


def truth_of(media: Path) -> dict[str, Any]:
    path = media.with_suffix(".truth.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{media}: no ground truth beside it ({path.name}); a scene to "
                        "evaluate needs one (as examples/demo.truth.json)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable ground truth ({e})") from None


def previous_speaker_baseline(truth: dict[str, Any]) -> tuple[int, int]:
    """Addressee = the last other speaker, from the truth's own speaker order."""
    right = asked = 0
    order = truth["turns"]
    for k, t in enumerate(order):
        if not t.get("addressee"):
            continue
        previous = next((o["speaker"] for o in reversed(order[:k])
                         if o["speaker"] != t["speaker"]), None)
        asked += 1
        right += previous == t["addressee"]
    return right, asked


def build_scene_replay(media: str, config: ReplayConfig, sinks: Sequence[Stage],
                       asr: bool = False) -> Replay:
    """`build_replay`; with `asr`, the transcript beside the media left unread and the
    recogniser on, so that the words are the recogniser's, whatever the config said."""
    if asr:
        config = config.model_copy(update={
            "recognizer": config.recognizer.model_copy(update={"enabled": True})})
    return build_replay(media, config, sinks, sidecar=not asr)


def evaluate_scenes(scenes: list[Path], predictor: str, weights: Path | None,
                    model: str | None, out: Console, asr: bool = False
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per scene: predictions and words scored; and the words of all scenes together."""
    if weights is not None:
        raise UserError("--weights applies to labelled items; a scene replays with the "
                        "packaged ranker")
    results: dict[str, Any] = {}
    table = Table(title="scenes (replayed, predictions after every turn)", title_justify="left")
    for column in ("scene", "task", "n", "accuracy", "95 % interval", "previous speaker"):
        table.add_column(column, justify="left" if column in ("scene", "task") else "right")
    words = _words_table(asr)
    total: WordScores | None = None
    latencies: list[float] = []
    every: list[dict[str, Any]] = []
    for media in scenes:
        truth = truth_of(media)
        report, sink = _replay(media, predictor, model, asr)
        predictions = [i for i in sink.items if isinstance(i, Prediction)]
        scene: dict[str, Any] = {"real_time_factor": report.real_time_factor,
                                 "wall_s": round(report.wall_s, 3),
                                 "tasks": _score_tasks(media, predictions, truth, table)}
        turns = [turn_event(t, media.stem) for t in sink.turns]
        scores = score_words(turns, truth["turns"])
        delays = word_latencies(turns)
        scene["words"] = _words_json(scores, turns, delays)
        _add_words_row(words, media.name, scene["words"])
        total = scores if total is None else total + scores
        latencies += delays
        every += turns
        results[str(media)] = scene
    out.print(table)
    summary = _words_json(total, every, latencies) if total is not None else {}
    if len(scenes) > 1 and total is not None:
        _add_words_row(words, "all", summary)
    out.print(words)
    return results, summary


def _replay(media: Path, predictor: str, model: str | None, asr: bool
            ) -> tuple[ReplayReport, Collect]:
    config = load_config(None, {"predictions": {"predictor": predictor},
                                "engine": {"model": model}, "output": {"progress": False}})
    sink = Collect((Turn, Prediction))
    replay = build_scene_replay(str(media), config, [sink], asr=asr)
    return asyncio.run(run_replay(replay)), sink


def _score_tasks(media: Path, predictions: list[Prediction], truth: dict[str, Any],
                 table: Table) -> dict[str, Any]:
    """The predictions' accuracy per task, with the previous-speaker rule beside it."""
    counts = score_predictions([prediction_event(p, media.stem) for p in predictions], truth)
    base = previous_speaker_baseline(truth)
    tasks: dict[str, Any] = {}
    for task, (right, n) in counts.items():
        low, high = wilson(right, n)
        tasks[task] = {"accuracy": round(right / n, 4) if n else 0.0, "n": n,
                       "interval95": [round(low, 4), round(high, 4)]}
        baseline = f"{base[0] / base[1]:.1%}" if task == "addressee" and base[1] else "-"
        if task == "addressee" and base[1]:
            tasks[task]["baselines"] = {"previous_speaker": round(base[0] / base[1], 4)}
        table.add_row(media.name, task, str(n), f"{right / n:.1%}" if n else "-",
                      f"{low:.1%}-{high:.1%}", baseline)
    return tasks


def _words_table(asr: bool) -> Table:
    source = "recognised from the audio" if asr else "from the transcript where there is one"
    table = Table(title=f"words ({source})", title_justify="left", caption_justify="left",
                  caption="WER: each output turn against the truth turn it overlaps most; "
                          "cpWER: each speaker's words; empty: turns without words over "
                          "speech; overlaps: pairs of turns sharing time they did not declare; "
                          "lag: from a recognised turn's end to its words out (media s)")
    for column in ("scene", "out/truth", "WER", "cpWER", "empty", "overlaps", "words from",
                   "lag p50/p95"):
        table.add_column(column, justify="left" if column in ("scene", "words from")
                         else "right", no_wrap=column == "scene")
    return table


def _words_json(scores: WordScores, turns: list[dict[str, Any]],
                delays: list[float]) -> dict[str, Any]:
    made = Counter(str(t["words_from"]).lower() for t in turns)  # None: "none"
    return {**scores.to_json(), "words_from": dict(sorted(made.items())),
            "word_latency": percentiles(delays)}


def _add_words_row(table: Table, name: str, words: dict[str, Any]) -> None:
    latency = words["word_latency"]
    table.add_row(name, f"{words['turns_out']}/{words['turns_truth']}",
                  f"{words['wer']['rate']:.1%}", f"{words['cpwer']['rate']:.1%}",
                  str(words["empty_speech_turns"]), str(words["overlapping_turns"]),
                  ", ".join(f"{k} {v}" for k, v in words["words_from"].items()),
                  f"{latency['p50_s']:.2f}/{latency['p95_s']:.2f} s" if latency["n"] else "-")
