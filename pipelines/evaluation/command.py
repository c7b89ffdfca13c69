"""The `eval` and `train-predictor` subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.evaluation.items import Report, check_folds, engine_comparison, evaluate, wilson
from stream.errors import UserError
from stream.tasks.items import ItemError, Loaded, read_items
from stream.tasks.predictors import TEXT_PREDICTORS
from stream.tasks.ranker import WeightsError, train

SCENE_SUFFIXES = {".mp4", ".mkv", ".mov", ".webm", ".avi", ".wav", ".ts"}


def add_parsers(commands: argparse._SubParsersAction, help_text: dict[str, str]) -> None:
    ev = commands.add_parser(
        "eval", help="score social predictions on labelled dialogue or on a scene with truth")
    ev.add_argument("data", nargs="+", type=Path, metavar="DATA",
                    help="eval-item JSONL files, Online-MMSI folders (metadata.csv), or "
                         "media with a MEDIA.truth.json beside it (examples/demo.mp4)")
    ev.add_argument("--predictor", default="fusion", choices=[*TEXT_PREDICTORS, "engine"],
                    help="which predictor answers (default: fusion)")
    ev.add_argument("--cv", type=int, default=0, metavar="K",
                    help="fusion only: retrain the ranker K times, each item answered by one "
                         "that never saw its conversation (the figure for the dev files)")
    ev.add_argument("--weights", type=Path, help="fusion weights from train-predictor "
                                                 "(default: the packaged ones)")
    ev.add_argument("--model", help="also score a language model's answers, with the "
                                    "attention bias on and off, and fused (needs --cv)")
    ev.add_argument("--rttm", type=Path, metavar="REF.rttm",
                    help="DATA are recordings: replay each and score its turns against this "
                         "who-spoke-when (voice activity, turn purity and coverage, DER)")
    ev.add_argument("--uem", type=Path, metavar="REF.uem",
                    help="with --rttm: the scored regions (default: each whole recording)")
    ev.add_argument("--config", type=Path, metavar="FILE",
                    help="with --rttm: replay with this YAML config (as configs/replay.yaml)")
    ev.add_argument("--asr", action="store_true",
                    help="scenes: leave the transcript beside each scene unread and "
                         "recognise the words from the audio, to score the recogniser")
    ev.add_argument("--json", action="store_true",
                    help="end stdout with one JSON object (tables go to stderr)")
    ev.add_argument("--out", type=Path, help="also write the JSON report to this file")
    ev.set_defaults(func=run_eval)

    tr = commands.add_parser("train-predictor",
                             help="train the fusion ranker on labelled items (reproducible)")
    tr.add_argument("data", nargs="+", type=Path, metavar="DATA",
                    help="eval-item JSONL files or Online-MMSI folders")
    tr.add_argument("--out", type=Path, required=True, help="weights file to write (JSON)")
    tr.add_argument("--seed", type=int, default=0, help="seed of the inner cross-validation")
    tr.set_defaults(func=run_train)


def _load(paths: list[Path], stderr: Console) -> Loaded:
    try:
        loaded = read_items(paths)
    except ItemError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"{e.filename}: cannot read ({e.strerror})") from None
    for problem in loaded.problems[:20]:
        stderr.print(f"[yellow]skipped[/] {problem}", highlight=False)
    if len(loaded.problems) > 20:
        stderr.print(f"[yellow]... and {len(loaded.problems) - 20} more skipped[/]")
    for note in loaded.notes:
        stderr.print(note, highlight=False)
    if not loaded.items:
        raise UserError(f"{', '.join(map(str, paths))}: no usable items "
                        f"({len(loaded.problems)} skipped)")
    return loaded


def run_eval(args: argparse.Namespace, stderr: Console) -> int:
    if args.cv and args.predictor != "fusion":
        raise UserError("--cv retrains the fusion ranker: use it with --predictor fusion")
    if args.cv == 1 or args.cv < 0:
        raise UserError(f"--cv {args.cv}: give 2 or more folds (0 for none)")
    scenes = [p for p in args.data if p.suffix.lower() in SCENE_SUFFIXES]
    data = [p for p in args.data if p not in scenes]
    out = Console(stderr=True, soft_wrap=True) if args.json else Console(soft_wrap=True)
    result: dict[str, Any] = {}
    for flag in ("uem", "config"):
        if getattr(args, flag) is not None and args.rttm is None:
            raise UserError(f"--{flag} applies to an --rttm evaluation: give --rttm REF.rttm "
                            "too")
    if args.rttm is not None:
        if args.asr:
            raise UserError("--asr applies to scenes with truth, not to an --rttm evaluation")
        if data:
            raise UserError(f"{data[0]}: --rttm scores recordings (audio or video), not "
                            "labelled dialogue; run those without --rttm")
        from pipelines.evaluation.turns import evaluate_turns

        result = evaluate_turns(scenes, args.rttm, args.uem, out, config=args.config)
        return _finish(args, result)
    if args.asr and not scenes:
        raise UserError("--asr recognises the words of scenes (media with a MEDIA.truth.json "
                        "beside it): give one")
    if data:
        loaded = _load(data, stderr)
        if args.cv:
            try:
                check_folds(loaded.items, args.cv)
            except ValueError as e:
                raise UserError(str(e)) from None
        reports = _reports(args, loaded, stderr)
        for report in reports:
            _print(out, report, loaded)
        result = reports[0].to_json() if len(reports) == 1 else {
            **reports[0].to_json(), "compared": [r.to_json() for r in reports]}
    if scenes:
        from pipelines.evaluation.scene import evaluate_scenes

        result["scenes"], result["words"] = evaluate_scenes(
            scenes, args.predictor, args.weights, args.model, out, asr=args.asr)
    return _finish(args, result)


def _finish(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    return 0


def _reports(args: argparse.Namespace, loaded: Loaded, stderr: Console) -> list[Report]:
    try:
        if args.model is None:
            return [evaluate(loaded, args.predictor, args.cv, args.weights)]
        if not args.cv:
            raise UserError("--model compares the engine with the fusion ranker trained on "
                            "the other folds: add --cv K")
        from stream.engine.config import PredictorConfig
        from stream.engine.loading import load_backend
        from stream.tasks.predictors import EnginePredictor

        config = PredictorConfig(model=args.model)
        stderr.print(f"loading {args.model} ...")
        backend = load_backend(args.model, device=config.device, pixels=config.pixels,
                               prompting=False, video=False)
        engines = [EnginePredictor(backend, config, bias=True),
                   EnginePredictor(backend, config, bias=False)]
        return engine_comparison(loaded, engines, args.cv)
    except WeightsError as e:
        raise UserError(str(e)) from None


def _print(out: Console, report: Report, loaded: Loaded) -> None:
    table = Table(title=f"{report.predictor}: {len(loaded.items)} items", title_justify="left")
    for column in ("source", "task", "n", "accuracy", "95 % interval", "chance",
                   "previous speaker", "mention-then-speaker"):
        table.add_column(column, justify="left" if column in ("source", "task") else "right")
    rows = [("all", report.tasks)] + (list(report.by_source.items())
                                      if len(report.by_source) > 1 else [])
    for source, tasks in rows:
        for task, s in tasks.items():
            low, high = wilson(s.right, s.n)
            table.add_row(source, task, str(s.n), f"{s.accuracy:.1%}",
                          f"{low:.1%}-{high:.1%}",
                          *(f"{s.baselines[b]:.1%}" for b in
                            ("chance", "previous_speaker", "mention_then_speaker")))
    out.print(table)
    out.print(f"per item: p50 {report.latency(50):.2f} ms, p95 {report.latency(95):.2f} ms; "
              f"{len(report.problems)} lines skipped", highlight=False)


def run_train(args: argparse.Namespace, stderr: Console) -> int:
    loaded = _load(args.data, stderr)
    ranker = train(loaded.items, seed=args.seed, sources=args.data)
    try:
        ranker.save(args.out)
    except OSError as e:
        raise UserError(f"{args.out}: cannot write ({e.strerror})") from None
    for task, w in ranker.tasks.items():
        stderr.print(f"{task}: {w.items} items, C={w.c}", highlight=False)
    stderr.print(f"wrote {args.out}", highlight=False)
    return 0
