"""`socialstream bench engine`: the warm session against re-encoding the whole history.

Each turn is what the product does after every utterance: the turn's key
frames, the utterance (biased toward its speaker) and three questions (whom
the speaker addresses, whom "you" refers to, who is mentioned). Three runs over
the same scripted conversation on one random Qwen2.5-VL of a real shape:

- incremental, plain sdpa (bias off);
- incremental, biased attention (the product path);
- re-encoding: at sampled turns, a fresh session re-encodes every frame and
  utterance so far, then asks the same questions (what Online-MMSI-VLM does).

Figures: per-turn seconds against turn index, `speedup_last_turn` (re-encoding
/ incremental at the last turn, with the ratio of tokens processed, its limit),
`flatness` (incremental last turn / turn 3) and `bias_overhead` (biased /
plain - 1 over all turns after the first). A turn's incremental cost in the two
ratios is the median of that turn and its two neighbours (turns 2-4 for turn 3,
the last three for the last): a single turn's time is noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from stream.engine.backends import QwenVLBackend
from stream.engine.config import EngineConfig
from stream.engine.session import Session, UtteranceReport
from stream.engine.synthetic import CORPUS, random_qwen, scene, word_tokenizer
from stream.errors import UserError
from stream.frames import PlayerView, VideoFrame

SYSTEM = "You watch a conversation between P1, P2 and P3. Who is the speaker talking to?"
QUESTIONS = ["Who is the speaker talking to? Answer:", "Who does you refer to? Answer:",
             "Who is mentioned? Answer:"]
CANDIDATES = ["P1", "P2", "P3", "Someone"]
FRAME_SIZE = (640, 480)


@dataclass(frozen=True)
class ScriptedTurn:
    speaker: str
    text: str
    frames: list[VideoFrame]
    views: list[tuple[PlayerView, ...]]


def bench_engine(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    if args.turns < 3:
        raise UserError("--turns must be >= 3 (flatness compares the last turn with turn 3)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _dtype(args.dtype, device)
    pixels = args.pixels or (448 * 448 if device.startswith("cuda") else 112 * 112)
    tokenizer = word_tokenizer()
    stderr.log(f"building a random {args.shape} Qwen2.5-VL ({dtype}) on {device}")
    model = random_qwen(args.shape, len(tokenizer), dtype=dtype, device=device)
    backend = QwenVLBackend(model, tokenizer, pixels=pixels)
    script = _script(args.turns, args.frames)
    sampled = sorted({3, args.turns, *range(args.baseline_every, args.turns + 1,
                                            max(1, args.baseline_every))})

    _incremental(backend, script[:2], stderr=None)  # warm-up: kernels, allocator
    plain_run, run = _incremental(backend, script, stderr=stderr)
    plain, biased, tokens, session = plain_run.seconds, run.seconds, run.tokens, run.session
    frame = session.ledger.of("frame")[-1]
    reencode: dict[int, tuple[float, int]] = {}
    for turn in sampled:
        reencode[turn] = _reencode(backend, script[:turn])
        stderr.log(f"re-encode at turn {turn}: {reencode[turn][0]:.3f}s, "
                   f"{reencode[turn][1]} tokens")
    _table(stderr, plain, biased, tokens, reencode)
    last = args.turns
    return {
        "device": _device_name(device), "dtype": str(dtype).removeprefix("torch."),
        "shape": args.shape, "turns": last, "frames_per_turn": args.frames,
        "tokens_per_frame": len(frame), "biased_layers": len(session.layers),
        "cache_tokens_last_turn": session.length,
        "incremental_s": [round(t, 4) for t in biased],
        "plain_s": [round(t, 4) for t in plain],
        "reencode_s": {str(k): round(v[0], 4) for k, v in reencode.items()},
        "tokens_last_turn": tokens[-1], "reencode_tokens_last_turn": reencode[last][1],
        "token_ratio_last_turn": round(reencode[last][1] / tokens[-1], 2),
        "active_head_share": round(run.active_heads / max(run.heads, 1), 4),
        "speedup_last_turn": round(reencode[last][0] / _around(biased, last), 2),
        "flatness": round(_around(biased, last) / _around(biased, 3), 3),
        "bias_overhead": round(sum(biased[1:]) / sum(plain[1:]) - 1, 4),
    }


def _script(turns: int, frames: int) -> list[ScriptedTurn]:
    script = []
    for turn in range(turns):
        speaker = f"P{turn % 3 + 1}"
        shots = [scene(turn * 3.0 + k, speaker, seed=turn * 100 + k, size=FRAME_SIZE)
                 for k in range(frames)]
        script.append(ScriptedTurn(speaker, CORPUS[turn % 6], [f for f, _ in shots],
                                   [v for _, v in shots]))
    return script


def _turn(session: Session, turn: ScriptedTurn, bias: bool) -> tuple[int, UtteranceReport]:
    """Run one turn; returns the tokens it prefilled and what the bias did."""
    before = session.length
    session.append_frames(turn.frames, turn.views)
    report = session.append_utterance(turn.speaker, turn.text, bias=bias)
    session.ask_many([(question, CANDIDATES) for question in QUESTIONS])
    asked = sum(len(session.backend.token_ids(q)) for q in QUESTIONS) + len(QUESTIONS) * sum(
        len(session.backend.token_ids(" " + c)) for c in CANDIDATES)
    return session.length - before + asked, report


@dataclass
class Run:
    seconds: list[float]
    tokens: list[int]
    session: Session
    active_heads: int = 0
    heads: int = 0


def _incremental(backend: QwenVLBackend, script: list[ScriptedTurn],
                 stderr: Console | None) -> tuple[Run, Run]:
    """Plain and biased sessions side by side, turn by turn, so drift hits both alike."""
    runs = []
    for _ in range(2):
        session = Session(backend, EngineConfig())
        session.append_system(SYSTEM)
        runs.append(Run([], [], session))
    for i, turn in enumerate(script):
        # ABBA order: whichever runs first in a turn meets its new shapes first.
        order = [(runs[0], False), (runs[1], True)][::1 if i % 2 == 0 else -1]
        for run, bias in order:
            began = _now(backend)
            tokens, report = _turn(run.session, turn, bias)
            run.seconds.append(_now(backend) - began)
            run.tokens.append(tokens)
            for record in report.records.values():
                run.active_heads += int(record.active.sum())
                run.heads += len(record.active)
        if stderr is not None:
            stderr.log(f"turn {i + 1}/{len(script)}: plain {runs[0].seconds[-1]:.3f}s, "
                       f"biased {runs[1].seconds[-1]:.3f}s, cache {runs[1].session.length} tokens")
    return runs[0], runs[1]


def _reencode(backend: QwenVLBackend, history: list[ScriptedTurn]) -> tuple[float, int]:
    began = _now(backend)
    session = Session(backend, EngineConfig())
    session.append_system(SYSTEM)
    for turn in history[:-1]:
        session.append_frames(turn.frames, turn.views)
        session.append_utterance(turn.speaker, turn.text)
    before = session.length
    processed, _ = _turn(session, history[-1], bias=True)
    return _now(backend) - began, processed + before


def _around(seconds: list[float], turn: int) -> float:
    """One turn's cost as the median of it and its neighbours: one turn alone is noisy."""
    first = min(max(turn - 2, 0), len(seconds) - 3)
    return statistics.median(seconds[first:first + 3])


def _now(backend: QwenVLBackend) -> float:
    if backend.device.type == "cuda":
        torch.cuda.synchronize(backend.device)
    return time.perf_counter()


def _dtype(choice: str, device: str) -> torch.dtype:
    if choice != "auto":
        return getattr(torch, choice)
    if device.startswith("cuda"):
        return torch.bfloat16
    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
    return torch.bfloat16 if native else torch.float32


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def _table(stderr: Console, plain: list[float], biased: list[float], tokens: list[int],
           reencode: dict[int, tuple[float, int]]) -> None:
    table = Table(title="engine: seconds per turn (frames + utterance + 3 questions)")
    for column in ("turn", "tokens", "plain", "biased", "re-encode", "speedup"):
        table.add_column(column, justify="right")
    for i, (p, b, n) in enumerate(zip(plain, biased, tokens, strict=True), start=1):
        again = reencode.get(i)
        table.add_row(str(i), str(n), f"{p:.3f}", f"{b:.3f}",
                      f"{again[0]:.3f}" if again else "", f"{again[0] / b:.1f}x" if again else "")
    stderr.print(table)
    stderr.log(f"median biased turn {statistics.median(biased):.3f}s")
