"""`socialstream eval MEDIA`: replay a scene that has ground truth (`MEDIA.truth.json`)
and score the predictions made after each of its turns."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.config import load_config
from pipelines.eval import wilson
from pipelines.replay import Collect, build_replay, run_replay
from stream.engine.evaluate import score_predictions
from stream.errors import UserError
from stream.events import prediction_event
from stream.frames import Prediction, Turn


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


def evaluate_scenes(scenes: list[Path], predictor: str, weights: Path | None,
                    model: str | None, out: Console) -> dict[str, Any]:
    if weights is not None:
        raise UserError("--weights applies to labelled items; a scene replays with the "
                        "packaged ranker")
    results: dict[str, Any] = {}
    table = Table(title="scenes (replayed, predictions after every turn)", title_justify="left")
    for column in ("scene", "task", "n", "accuracy", "95 % interval", "previous speaker"):
        table.add_column(column, justify="left" if column in ("scene", "task") else "right")
    for media in scenes:
        truth = truth_of(media)
        config = load_config(None, {"predictions": {"predictor": predictor},
                                    "engine": {"model": model},
                                    "output": {"progress": False}})
        sink = Collect((Turn, Prediction))
        replay = build_replay(str(media), config, [sink])
        report = asyncio.run(run_replay(replay))
        predictions = [i for i in sink.items if isinstance(i, Prediction)]
        events = [prediction_event(p, media.stem) for p in predictions]
        counts = score_predictions(events, truth)
        base = previous_speaker_baseline(truth)
        scene: dict[str, Any] = {"real_time_factor": report.real_time_factor,
                                 "wall_s": round(report.wall_s, 3), "tasks": {}}
        for task, (right, n) in counts.items():
            low, high = wilson(right, n)
            scene["tasks"][task] = {"accuracy": round(right / n, 4) if n else 0.0, "n": n,
                                    "interval95": [round(low, 4), round(high, 4)]}
            baseline = f"{base[0] / base[1]:.1%}" if task == "addressee" and base[1] else "-"
            if task == "addressee" and base[1]:
                scene["tasks"][task]["baselines"] = {
                    "previous_speaker": round(base[0] / base[1], 4)}
            table.add_row(media.name, task, str(n), f"{right / n:.1%}" if n else "-",
                          f"{low:.1%}-{high:.1%}", baseline)
        results[str(media)] = scene
    out.print(table)
    return results
