"""`socialstream bench NAME`: speed figures as ratios against a baseline from the same run.

`replay`: decode+VAD+turns, without and with perception, on a clip against
decoding the same clip alone, as real-time factors (processing seconds per
media second). With `--asr`, also with the words recognised from the audio (the
transcript beside the clip left unread) and how long after a turn's end its words
are out, in media time; with `--paced` too, in wall-clock time at live pace.
`perception`: decode-only frame rate, face detection per frame, the whole
perception path as a real-time factor for live 30 fps input, and the wall-clock
latency from a frame's media time to its speaker decision in a paced replay.
`view`: the annotated video and the web view with two viewers against a plain replay.
`sessions`: how many conversations one model keeps under p95 1 s at real-time pace
(`sessions.py`).
`soak`: a live session on a looping stream for `--minutes`, its sender and broker
restarted at intervals: memory over time, turns lost, restarts survived
(`soak.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from pipelines.bench.docs import check_doc, command_of, write_figures
from pipelines.bench.mqtt import bench_mqtt
from pipelines.bench.sessions import bench_sessions
from pipelines.bench.soak import bench_soak
from pipelines.bench.view import bench_view
from pipelines.config import ReplayConfig, load_config
from pipelines.run.replay import Collect, build_replay, replay_and_collect, run_replay
from stream.errors import UserError
from stream.events import turn_event
from stream.frames import Item, PerceivedFrame, Turn
from stream.runtime import Stage
from stream.sources.media import MediaSource, probe
from stream.sources.pacing import Pacer
from stream.speaker.evaluate import score
from stream.vision.faces import FaceConfig, FaceDetector

DEMO = Path("examples/demo.mp4")
QUARTET = Path("examples/quartet.mp4")
EXAMPLES = Path("examples")


def add_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="measure speed (ratios against a same-run baseline)")
    bench.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    bench.add_argument("--media", help="clip to use (default: examples/demo.mp4 for replay, "
                       "examples/quartet.mp4, four faces, for perception)")
    bench.add_argument("--repeat", type=int, default=3, help="runs per measurement; median kept")
    bench.add_argument("--sessions", type=int, default=8, help="mqtt: concurrent sessions")
    bench.add_argument("--events", type=int, default=500, help="mqtt: events per session")
    bench.add_argument("--mqtt", metavar="URL",
                       help="mqtt: broker to load (default: a private mosquitto)")
    bench.add_argument("--json", action="store_true",
                       help="end the output with one JSON object of the figures")
    bench.add_argument("--docs", metavar="FILE", type=Path,
                       help="also write the figures into FILE (Markdown), between the "
                            "`<!-- figures: COMMAND -->` markers of this command, with the "
                            "machine and commit")
    bench.add_argument("--asr", action="store_true",
                       help="replay: also replay with the words recognised from the audio "
                            "(the transcript left unread), and time the words")
    bench.add_argument("--paced", action="store_true",
                       help="replay --asr: also once at live pace, for the wall-clock delay "
                            "from a turn's end to its recognised words")
    engine = bench.add_argument_group("engine")
    engine.add_argument("--turns", type=int, default=30, help="engine: conversation length")
    engine.add_argument("--shape", choices=["tiny", "0.5b", "3b"], default="0.5b",
                        help="engine: random Qwen2.5-VL of this text-decoder shape")
    engine.add_argument("--device", help="engine: torch device (default: cuda if present)")
    engine.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="engine: auto = bfloat16 where the hardware computes it natively "
                        "(GPU, CPU with AVX512-BF16/AMX), else float32")
    engine.add_argument("--frames", type=int, default=2, help="engine: key frames per turn")
    engine.add_argument("--pixels", type=int,
                        help="engine: pixels per frame for the vision tower "
                        "(default 448x448 on a GPU, 112x112 on a CPU)")
    engine.add_argument("--baseline-every", type=int, default=10,
                        help="engine: re-encode at every Nth turn (plus turn 3 and the last)")
    sessions = bench.add_argument_group("sessions")
    sessions.add_argument("--model", default="smollm2",
                          help="sessions: the model every session shares (default smollm2; "
                               "tiny-qwen2.5-vl: a random tiny Qwen2.5-VL made here)")
    sessions.add_argument("--every", type=float, default=3.0,
                          help="sessions: seconds between one session's turns")
    sessions.add_argument("--session-turns", type=int, default=6,
                          help="sessions: turns per session")
    sessions.add_argument("--budget-mb", type=float, default=512.0,
                          help="sessions: memory budget of all sessions' caches")
    sessions.add_argument("--max-sessions", type=int, default=64,
                          help="sessions: the most sessions tried")
    soak = bench.add_argument_group("soak")
    soak.add_argument("--minutes", type=float, default=60.0,
                      help="soak: how long the live session runs")
    soak.add_argument("--sender-every", type=float, default=10.0, metavar="MIN",
                      help="soak: restart the sender every MIN minutes")
    soak.add_argument("--broker-every", type=float, default=15.0, metavar="MIN",
                      help="soak: restart the broker every MIN minutes")
    soak.add_argument("--sample-every", type=float, default=10.0, metavar="S",
                      help="soak: sample the live process every S seconds")
    soak.add_argument("--out-dir", default="bench-soak",
                      help="soak: where the samples (CSV), figures (JSON), the RSS plot (SVG), "
                           "the session's log and events go")
    soak.add_argument("--config", help="soak: YAML config for the live session")
    soak.add_argument("--no-asr", action="store_true",
                      help="soak: the live session without recognising words")
    bench.set_defaults(func=run)


def run(args: argparse.Namespace, stderr: Console) -> int:
    if args.repeat < 1:
        raise UserError("--repeat must be >= 1")
    args.media = args.media or str(QUARTET if args.name == "perception" else DEMO)
    command = command_of(getattr(args, "argv", sys.argv[1:]))
    if args.docs is not None:
        check_doc(args.docs, command)
    figures = BENCHES[args.name](args, stderr)
    table = Table(title=f"bench {args.name}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in _flat(figures).items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    (stderr if args.json else Console()).print(table)
    if args.json:
        print(json.dumps(figures), flush=True)
    if args.docs is not None:
        write_figures(args.docs, command, _flat(figures))
        stderr.print(f"figures written to {args.docs}")
    return 0


def _flat(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested figures as `a.b.c` rows; lists (the engine's per-turn series, which have a
    table of their own) are left out."""
    rows: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            rows.update(_flat(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            rows[f"{prefix}{key}"] = value
    return rows


async def _decode_only(media: str) -> int:
    source = MediaSource(media)
    count = 0
    try:
        async for _ in source.items():
            count += 1
    finally:
        await source.close()
    return count


SPEAKER_MODELS = ("light_asd", "mouth")
SCENES = ("demo", "duo", "quartet", "varied", "handover")


def _config(model: str | None = None, **overrides: Any) -> ReplayConfig:
    speaker = {"perception": {"speaker": {"model": model}}} if model else {}
    return load_config(None, {"output": {"progress": False}, **speaker, **overrides})


async def _replay_once(media: str, perception: bool = True, model: str | None = None) -> int:
    config = _config(model) if perception else load_config(None, {
        "output": {"progress": False}, "perception": {"enabled": False}})
    collect = Collect()
    replay = build_replay(media, config, [collect])
    await run_replay(replay)
    return len(collect.turns)


def _median_seconds(work: Any, repeat: int, stderr: Console, label: str) -> tuple[float, Any]:
    """Median wall time of `repeat` runs after a warm-up, and what the last run returned."""
    times = []
    for i in range(repeat + 1):  # the first run warms caches and is not counted
        began = time.perf_counter()
        result = asyncio.run(work())
        if i:
            times.append(time.perf_counter() - began)
        stderr.log(f"{label}: run {i + 1}/{repeat + 1}"
                   f"{' (warm-up)' if i == 0 else f' {times[-1]:.3f}s'}")
    return statistics.median(times), result


def bench_replay(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    if args.paced and not args.asr:
        raise UserError("--paced times the recognised words at live pace: add --asr")
    duration = probe(args.media).duration or 0.0
    decode, _ = _median_seconds(lambda: _decode_only(args.media), args.repeat, stderr, "decode")
    audio, _ = _median_seconds(lambda: _replay_once(args.media, perception=False), args.repeat,
                               stderr, "replay without perception")
    full, turns = _median_seconds(lambda: _replay_once(args.media), args.repeat, stderr,
                                  "replay")
    figures = {
        "media": args.media,
        "media_s": round(duration, 3),
        "turns": turns,
        "decode_s": round(decode, 4),
        "replay_no_perception_s": round(audio, 4),
        "replay_s": round(full, 4),
        "decode_rtf": round(decode / duration, 4),
        "replay_no_perception_rtf": round(audio / duration, 4),
        "replay_rtf": round(full / duration, 4),
        "replay_no_perception_over_decode": round(audio / decode, 3),
        "replay_over_decode": round(full / decode, 3),
    }
    if args.asr:
        figures["asr"] = _bench_asr(args, stderr, duration)
    return figures


def _bench_asr(args: argparse.Namespace, stderr: Console, duration: float) -> dict[str, Any]:
    """The full replay with the words from the transcript and with them recognised, paired
    in each round (this shared machine drifts between rounds), and the recogniser's delay
    (`pipelines.evaluation.words.word_latencies`)."""
    from pipelines.evaluation.words import percentiles, word_latencies

    walls: dict[str, list[float]] = {"transcript": [], "asr": []}
    events: list[dict[str, Any]] = []
    for round_ in range(args.repeat + 1):  # round 0 warms caches and Whisper, not counted
        for kind in ("asr", "transcript") if round_ % 2 else ("transcript", "asr"):
            began = time.perf_counter()
            if kind == "asr":
                events = asyncio.run(_replay_asr(args.media))
            else:
                asyncio.run(_replay_once(args.media))
            wall = time.perf_counter() - began
            if round_:
                walls[kind].append(wall)
            stderr.log(f"replay, words from {kind}: round {round_ + 1}/{args.repeat + 1} "
                       f"{wall:.3f}s{' (warm-up)' if round_ == 0 else ''}")
    rounds = [a / t for a, t in zip(walls["asr"], walls["transcript"], strict=True)]
    figures: dict[str, Any] = {
        "transcript_rtf": round(statistics.median(walls["transcript"]) / duration, 4),
        "asr_rtf": round(statistics.median(walls["asr"]) / duration, 4),
        "asr_over_transcript": round(statistics.median(rounds), 3),
        "asr_over_transcript_rounds": [round(r, 3) for r in rounds],
        "turns": len(events),
        "recognised_turns": len(word_latencies(events)),
        "word_latency_media": percentiles(word_latencies(events)),
    }
    if args.paced:
        stderr.log("replay with the words recognised, at live pace")
        figures["word_latency_wall"] = percentiles(asyncio.run(_paced_word_lags(args.media)))
    return figures


async def _replay_asr(media: str) -> list[dict[str, Any]]:
    from pipelines.evaluation.scene import build_scene_replay

    collect = Collect()
    await run_replay(build_scene_replay(media, _config(), [collect], asr=True))
    return [turn_event(t, "bench") for t in collect.turns]


class _WordLagProbe(Stage):
    """Wall-clock delay from a recognised turn's end being due (paced) to the turn, with its
    words, reaching a sink."""

    name = "word-lag"
    inputs = (Turn,)

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.delays: list[float] = []

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, Turn) and item.words_from == "asr":
            due = self.pacer.wall_time(item.end)
            if due is not None:
                self.delays.append(time.monotonic() - due)
        return ()


async def _paced_word_lags(media: str) -> list[float]:
    from pipelines.evaluation.scene import build_scene_replay

    config = _config(source={"realtime": True})
    replay = build_scene_replay(media, config, [], asr=True)
    lag = _WordLagProbe(replay.media.pacer)
    replay.pipeline.add(lag)
    replay.pipeline.connect("turns", lag.name, Turn)
    await run_replay(replay)
    return lag.delays


def bench_perception(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    info = probe(args.media)
    duration = info.duration or 0.0

    async def decode_video() -> int:
        source = MediaSource(args.media, audio=False)
        try:
            return sum([1 async for _ in source.items()])
        finally:
            await source.close()

    decode, frames = _median_seconds(decode_video, args.repeat, stderr, "decode video")
    detect_ms = {model: _detect_ms(args.media, model) for model in ("full_range", "short_range")}
    whole, latency, accuracy = {}, {}, {}
    for model in SPEAKER_MODELS:
        whole[model], _ = _median_seconds(
            lambda m=model: _replay_once(args.media, model=m), args.repeat, stderr,
            f"replay, {model}")
        delays = asyncio.run(_paced_latencies(args.media, model))
        latency[model] = {
            "p50_ms": round(statistics.median(delays) * 1e3, 1),
            "p95_ms": round(float(np.percentile(delays, 95)) * 1e3, 1),
            "max_ms": round(max(delays) * 1e3, 1)}
        for scene in SCENES:
            media = str(EXAMPLES / f"{scene}.mp4")
            accuracy.setdefault(scene, {})[model] = _accuracy(media, model)
    faces = _faces(args.media)
    asd_ms = (whole["light_asd"] - whole["mouth"]) / max(duration * 25 * faces, 1e-9) * 1e3
    return {
        "media": args.media,
        "media_s": round(duration, 3),
        "frames": frames,
        "size": f"{info.width}x{info.height}",
        "decode_fps": round(frames / decode, 1),
        "detect_ms_full_range": round(detect_ms["full_range"], 3),
        "detect_ms_short_range": round(detect_ms["short_range"], 3),
        "decode_rtf": round(decode / duration, 4),
        "faces": faces,
        "perception_rtf": {m: round(whole[m] / duration, 4) for m in SPEAKER_MODELS},
        # Media time a frame waits for its score (Light-ASD: 6 ticks) is not in these: they
        # are wall clock from the frame being due to its decision in a paced replay.
        "decision_latency": latency,
        "light_asd_ms_per_face_tick": round(asd_ms, 2),
        "speaker": accuracy,
    }


def _faces(media: str) -> int:
    truth = Path(media).with_suffix(".truth.json")
    if truth.is_file():
        return len({t["speaker"] for t in json.loads(truth.read_text())["turns"]})
    return 1


def _accuracy(media: str, model: str) -> dict[str, float]:
    """Against the clip's ground truth, when it has one."""
    truth_path = Path(media).with_suffix(".truth.json")
    if not truth_path.is_file():
        return {}
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    frames, turns = replay_and_collect(media, _config(model))
    result = score(frames, turns, truth)
    return {
        "speaker_frame_accuracy": round(result.frame_accuracy, 4),
        "speaker_turn_accuracy": round(result.turn_accuracy, 4),
        "speaker_onset_lag_p50_ms": round(statistics.median(result.onset_lags) * 1e3, 1),
        "speaker_onset_lag_max_ms": round(max(result.onset_lags) * 1e3, 1),
    }


def _detect_ms(media: str, model: str, count: int = 120) -> float:
    async def pictures() -> list[np.ndarray]:
        source = MediaSource(media, audio=False)
        got = []
        try:
            async for frame in source.items():
                got.append(frame.image)
                if len(got) == count:
                    break
        finally:
            await source.close()
        return got

    images = asyncio.run(pictures())
    with FaceDetector(FaceConfig(model=model)) as detector:
        detector.detect(images[0])  # warm-up
        times = []
        for image in images:
            began = time.perf_counter()
            detector.detect(image)
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


class _LatencyProbe(Stage):
    """Wall-clock delay between a frame being due (paced) and its speaker decision."""

    name = "latency"

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.delays: list[float] = []

    async def process(self, item: Item) -> Sequence[Item]:
        due = self.pacer.wall_time(item.pts)
        if isinstance(item, PerceivedFrame) and due is not None:
            self.delays.append(time.monotonic() - due)
        return ()


async def _paced_latencies(media: str, model: str) -> list[float]:
    config = _config(model, source={"realtime": True})
    # The model's own delay, however far behind: no giving way to mouth motion here.
    speaker = config.perception.speaker.model_copy(update={"fallback_lag_s": None})
    config = config.model_copy(update={"perception": config.perception.model_copy(
        update={"speaker": speaker})})
    replay = build_replay(media, config, [])
    probe = _LatencyProbe(replay.media.pacer)
    replay.pipeline.add(probe)
    replay.pipeline.connect("perception", probe.name, PerceivedFrame)
    await run_replay(replay)
    return probe.delays


def bench_engine(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    from pipelines.bench.engine import bench_engine as run  # torch: imported only when used

    return run(args, stderr)


BENCHES = {"replay": bench_replay, "perception": bench_perception, "mqtt": bench_mqtt,
           "engine": bench_engine, "view": bench_view, "sessions": bench_sessions,
           "soak": bench_soak}
