"""`socialstream bench sessions`: how many conversations one warm model keeps at real-time
pace on this machine.

Each of N sessions sends a turn every `--every` seconds (3 s; the sessions staggered
evenly), the demo's turns in order, and one model answers them first come first served
through a `SessionPool` under `--budget-mb`. The compute is real (each `pool.turn` is
timed); the waiting is computed, not slept: a turn starts when it arrives or when the
turn before it is done, whichever is later, and its latency is done minus arrival.
That is exactly what one model serving in arrival order would see, and a run over N
sessions costs the compute of its turns, not N x 3 s of sleeping. The largest N whose
p95 stays under 1 s is `max_sessions_realtime` (found by doubling, then bisecting).

Baseline in the same run: the same turns on one plain `Predictor` (no pool), per-turn
compute; `pool_overhead_ms` is the pool's extra per turn with everything resident, and
`serve_overhead_ms` that of sending the turns one by one over HTTP to a local Ray
Serve deployment of one replica with the whole machine (`socialstream serve`): JSON
and PNG both ways, routing, and the replica's fsynced turn log. Null when Ray Serve is
not installed (the `serve` extra).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from stream.errors import UserError
from stream.frames import SpeakerVote, Turn

DEMO_TRUTH = Path("examples/demo.truth.json")
P95_GOAL_S = 1.0


def _turns(count: int) -> list[Turn]:
    """The demo's turns (words and speakers) with small synthetic key frames."""
    from stream.engine.synthetic import scene

    spoken = json.loads(DEMO_TRUTH.read_text())["turns"]
    turns = []
    for k in range(count):
        line = spoken[k % len(spoken)]
        shots = [scene(k * 3.0 + j, line["speaker"], seed=k * 10 + j) for j in range(2)]
        vote = SpeakerVote(speaker=line["speaker"], confidence=0.9,
                           scores={line["speaker"]: 0.9}, cues={})
        turns.append(Turn(pts=k * 3.0 + 2, index=k, start=k * 3.0, end=k * 3.0 + 2,
                          text=line["text"], keyframes=tuple(f for f, _ in shots),
                          views=tuple(v for _, v in shots), vote=vote))
    return turns


def bench_sessions(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    if args.every <= 0 or args.session_turns < 1 or args.budget_mb <= 0:
        raise UserError("--every, --session-turns and --budget-mb must be positive")
    with tempfile.TemporaryDirectory() as folder:
        model = _tiny_qwen(Path(folder)) if args.model == TINY_QWEN else args.model
        return _bench(args, model, stderr)


TINY_QWEN = "tiny-qwen2.5-vl"
"""A random Qwen2.5-VL with every part of the real one, tiny (`random_qwen("tiny")`): the
cost of the vision path and its caches without a checkpoint."""


def _tiny_qwen(folder: Path) -> str:
    from stream.engine.synthetic import random_qwen, word_tokenizer

    tokenizer = word_tokenizer()
    random_qwen("tiny", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _bench(args: argparse.Namespace, model: str, stderr: Console) -> dict[str, Any]:
    from stream.engine.config import PredictorConfig
    from stream.engine.loading import load_backend
    from stream.engine.predict import Predictor
    from stream.serving.pool import SessionPool

    stderr.log(f"loading {args.model} ...")
    backend = load_backend(model, device=args.device)
    config = PredictorConfig(model=model)
    turns = _turns(args.session_turns)
    budget = int(args.budget_mb * 2**20)

    warm = Predictor(backend, config)
    warm.turn(turns[0])
    plain = Predictor(backend, config)
    plain_s = []
    for turn in turns:
        began = time.perf_counter()
        plain.turn(turn)
        plain_s.append(time.perf_counter() - began)

    def paced(n: int) -> dict[str, Any]:
        pool = SessionPool(backend, config, budget)
        arrivals = sorted((k * args.every + s * args.every / n, s, k)
                          for k in range(len(turns)) for s in range(n))
        clock, latencies, compute = 0.0, [], []
        for arrival, s, k in arrivals:
            began = time.perf_counter()
            pool.turn(f"s{s}", turns[k])
            spent = time.perf_counter() - began
            clock = max(clock, arrival) + spent
            latencies.append(clock - arrival)
            compute.append(spent)
        stats = pool.stats()
        result = {"sessions": n, "p95_s": round(float(np.percentile(latencies, 95)), 3),
                  "p50_s": round(statistics.median(latencies), 3),
                  "compute_ms_per_turn": round(statistics.mean(compute) * 1e3, 1),
                  "resident": stats.resident, "evictions": stats.evictions,
                  "rebuilds": stats.rebuilds}
        stderr.log(f"{n} sessions: p95 {result['p95_s']} s, "
                   f"{result['compute_ms_per_turn']} ms per turn, {stats.rebuilds} rebuilds")
        return result

    runs: dict[int, dict[str, Any]] = {}

    def ok(n: int) -> bool:
        runs.setdefault(n, paced(n))
        return runs[n]["p95_s"] < P95_GOAL_S

    good, n = 0, 1
    while n <= args.max_sessions and ok(n):
        good, n = n, n * 2
    bad = min(n, args.max_sessions + 1)
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if ok(middle) else (good, middle)
    plain_ms = statistics.mean(plain_s) * 1e3
    serve_ms = _served_ms(args, model, turns, budget, stderr)
    return {
        "model": args.model, "turn_every_s": args.every, "turns_per_session": len(turns),
        "budget_mb": args.budget_mb,
        "max_sessions_realtime": good,
        "p95_s": runs[good]["p95_s"] if good else None,
        "inprocess_ms_per_turn": round(plain_ms, 1),
        "pool_overhead_ms": round(runs[1]["compute_ms_per_turn"] - plain_ms, 1),
        "serve_ms_per_turn": None if serve_ms is None else round(serve_ms, 1),
        "serve_overhead_ms": None if serve_ms is None else round(serve_ms - plain_ms, 1),
        "runs": [runs[k] for k in sorted(runs)],
    }


def _served_ms(args: argparse.Namespace, model: str, turns: list[Turn], budget: int,
               stderr: Console) -> float | None:
    """Mean wall time per turn of one session sent to a local Ray Serve replica."""
    try:
        import ray
        from ray import serve
    except ImportError:
        stderr.log("Ray Serve is not installed (extra [serve]): no serve_overhead_ms")
        return None
    from stream.serving.service import APP, HEADER, deployment
    from stream.serving.wire import turn_to_json

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def post(session: str, turn: Turn) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", data=json.dumps(turn_to_json(turn)).encode(),
            headers={HEADER: session, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()

    stderr.log("starting a local Ray Serve replica ...")
    with tempfile.TemporaryDirectory() as log_dir:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            cpus = float(ray.available_resources().get("CPU", 1.0))
            serve.run(deployment({"model": model, "device": args.device}, budget, log_dir,
                                 cpus_per_replica=cpus), name=APP, route_prefix="/")
            post("warm-up", turns[0])
            spent = []
            for turn in turns:
                began = time.perf_counter()
                post("bench", turn)
                spent.append(time.perf_counter() - began)
        finally:
            serve.shutdown()
            ray.shutdown()
    served = statistics.mean(spent) * 1e3
    stderr.log(f"Ray Serve: {served:.1f} ms per turn")
    return served
