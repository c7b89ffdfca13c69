"""`socialstream bench NAME`: speed figures as ratios against a baseline from the same run.

`replay`: decode+VAD+turns on a clip against decoding the same clip alone,
both as real-time factors (processing seconds per media second).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.config import load_config
from pipelines.replay import Collect, build_replay, run_replay
from stream.sources.media import MediaSource

DEMO = Path("examples/demo.mp4")


def add_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="measure speed (ratios against a same-run baseline)")
    bench.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    bench.add_argument("--media", default=str(DEMO), help="clip to replay (default: the demo)")
    bench.add_argument("--repeat", type=int, default=3, help="runs per measurement; median kept")
    bench.add_argument("--json", action="store_true",
                       help="end the output with one JSON object of the figures")
    bench.set_defaults(func=run)


def run(args: argparse.Namespace, stderr: Console) -> int:
    if args.repeat < 1:
        raise SystemExit("socialstream: error: --repeat must be >= 1")
    figures = BENCHES[args.name](args, stderr)
    table = Table(title=f"bench {args.name}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    (stderr if args.json else Console()).print(table)
    if args.json:
        print(json.dumps(figures))
    return 0


async def _decode_only(media: str) -> int:
    source = MediaSource(media)
    count = 0
    try:
        async for _ in source.items():
            count += 1
    finally:
        await source.close()
    return count


async def _replay_once(media: str) -> int:
    config = load_config(None, {"output": {"progress": False}})
    collect = Collect()
    replay = build_replay(media, config, [collect])
    await run_replay(replay)
    return len(collect.turns)


def _median_seconds(work: Any, repeat: int, stderr: Console, label: str) -> float:
    times = []
    for i in range(repeat + 1):  # the first run warms caches and is not counted
        began = time.perf_counter()
        asyncio.run(work())
        if i:
            times.append(time.perf_counter() - began)
        stderr.log(f"{label}: run {i + 1}/{repeat + 1}"
                   f"{' (warm-up)' if i == 0 else f' {times[-1]:.3f}s'}")
    return statistics.median(times)


def bench_replay(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    info = MediaSource(args.media).info
    duration = info.duration or 0.0
    decode = _median_seconds(lambda: _decode_only(args.media), args.repeat, stderr, "decode")
    full = _median_seconds(lambda: _replay_once(args.media), args.repeat, stderr, "replay")
    turns = asyncio.run(_replay_once(args.media))
    return {
        "media": args.media,
        "media_s": round(duration, 3),
        "turns": turns,
        "decode_s": round(decode, 4),
        "replay_s": round(full, 4),
        "decode_rtf": round(decode / duration, 4),
        "replay_rtf": round(full / duration, 4),
        "replay_over_decode": round(full / decode, 3),
    }


BENCHES = {"replay": bench_replay}
