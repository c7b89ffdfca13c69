"""`socialstream bench view`: what the annotated video and the web view add to a replay.

Three replays of the same clip take turns (plain, `--annotate`, `--web` with two viewers
reading everything in another process, as browsers would), in an order that rotates each
round, `--repeat` rounds after a warm-up round: the median real-time factor of each, and
the median over rounds of each one's wall time over the plain replay's in that round
(each round's ratio is listed too: this shared machine varies by about 10 % between
runs). The CPU time the replaying process spent (all its threads, not the viewers') is
compared the same way: it varies less than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from pipelines.config import load_config
from pipelines.run.replay import Collect, build_replay, run_replay
from stream.runtime import Stage
from stream.sources.media import probe
from stream.view.video import AnnotatedVideo
from stream.view.web import END, WebView

VIEWERS = 2
SPAWN = multiprocessing.get_context("spawn")
"""A fresh interpreter for the viewers: forking would copy the pipeline's threads."""


def _free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return int(probe_socket.getsockname()[1])


def _watch(port: int, viewers: int, pictures: Any, ready: Any) -> None:
    """Another process: `viewers` WebSocket clients that read until the run ends, each
    counting the pictures it got."""
    import aiohttp

    ready.set()  # started and imported: its start-up is not the replay's cost

    async def one(index: int) -> None:
        async with aiohttp.ClientSession() as client:
            for _ in range(600):  # until the replay's server is up
                try:
                    socket_ = await client.ws_connect(f"http://127.0.0.1:{port}/ws")
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            else:
                return
            async with socket_:
                async for message in socket_:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        pictures[index] += 1
                    elif message.data == END:
                        break

    async def all_viewers() -> None:
        await asyncio.gather(*(one(i) for i in range(viewers)))

    asyncio.run(all_viewers())


def _replay(media: str, sinks: list[Stage]) -> tuple[float, float]:
    """Wall seconds of one replay, and the CPU seconds this process spent on it (all its
    threads; not the viewers')."""
    config = load_config(None, {"output": {"progress": False}})
    replay = build_replay(media, config, [Collect(), *sinks])
    began = time.process_time()
    wall = asyncio.run(run_replay(replay)).wall_s
    return wall, time.process_time() - began


def bench_view(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    duration = probe(args.media).duration or 0.0
    walls: dict[str, list[float]] = {"plain": [], "annotate": [], "web": []}
    cpu: dict[str, list[float]] = {kind: [] for kind in walls}
    pictures: list[int] = []
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.repeat + 1):  # round 0 warms caches and is not counted
            kinds = list(walls)
            # The order rotates each round: no kind always runs after the same other one.
            for kind in kinds[round_ % 3:] + kinds[: round_ % 3]:
                sinks: list[Stage] = []
                watcher = None
                if kind == "annotate":
                    sinks = [AnnotatedVideo(Path(folder) / "bench.mp4")]
                elif kind == "web":
                    port = _free_port()
                    sinks = [WebView(f"127.0.0.1:{port}", "bench")]
                    ready, counts = SPAWN.Event(), SPAWN.Array("i", VIEWERS)
                    watcher = SPAWN.Process(target=_watch, args=(port, VIEWERS, counts, ready))
                    watcher.start()
                    ready.wait(60)
                wall, spent = _replay(args.media, sinks)
                if watcher is not None:
                    watcher.join(30)
                    if round_:
                        pictures.append(min(counts))
                if round_:
                    walls[kind].append(wall)
                    cpu[kind].append(spent)
                stderr.log(f"{kind}: round {round_ + 1}/{args.repeat + 1} {wall:.3f}s"
                           f"{' (warm-up)' if round_ == 0 else ''}")
    median = {kind: statistics.median(values) for kind, values in walls.items()}
    # Paired within each round, so that drift of the machine between rounds cancels.
    rounds = {kind: [w / p for w, p in zip(walls[kind], walls["plain"], strict=True)]
              for kind in ("annotate", "web")}
    ratio = {kind: statistics.median(values) for kind, values in rounds.items()}
    cpu_ratio = {kind: statistics.median(c / p for c, p in zip(cpu[kind], cpu["plain"],
                                                                strict=True))
                 for kind in ("annotate", "web")}
    return {
        "media": args.media,
        "media_s": round(duration, 3),
        "viewers": VIEWERS,
        "plain_rtf": round(median["plain"] / duration, 4),
        "annotate_rtf": round(median["annotate"] / duration, 4),
        "web_rtf": round(median["web"] / duration, 4),
        "annotate_over_plain": round(ratio["annotate"], 3),
        "web_over_plain": round(ratio["web"], 3),
        "web_over_plain_rounds": [round(r, 3) for r in rounds["web"]],
        "plain_cpu_s": round(statistics.median(cpu["plain"]), 3),
        "annotate_cpu_over_plain": round(cpu_ratio["annotate"], 3),
        "web_cpu_over_plain": round(cpu_ratio["web"], 3),
        "pictures_per_viewer": min(pictures) if pictures else 0,
    }
