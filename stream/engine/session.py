"""A conversation kept warm in one model's KV cache.

Every appended piece (frames, utterances) is prefilled on top of the cache with
explicit positions, never re-encoding the history. While an utterance is
prefilled, the speaker-aware bias (stream.engine.attention) may pull it toward
the speaker's tokens. `ask` and `generate` run on top of the cache and crop it
back: the conversation state never contains questions or answers. With a
context budget, the oldest frames (then the oldest utterances; never the
system prompt, the last `keep_turns` utterances or the frames of the turn being
built) are evicted whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache, PretrainedConfig

from stream.engine.attention import BiasPlan, HeadRecord, register
from stream.engine.backends.base import Backend, Chunk
from stream.engine.cache import GrowingLayer, growing_cache
from stream.engine.config import EngineConfig
from stream.engine.ledger import Ledger, Span, SpanKind
from stream.errors import ModelError
from stream.frames import AttentionMap, PlayerView, VideoFrame


class ContextFull(RuntimeError):
    """The budget is smaller than what may never be evicted, or positions ran out."""


HEADROOM = 256
"""Positions kept free after the conversation for the questions asked on top of it."""


@dataclass
class UtteranceReport:
    """What the bias did while one utterance was prefilled."""

    span: Span
    records: dict[int, HeadRecord] = field(default_factory=dict)
    frames: list[Span] = field(default_factory=list)
    """The turn's frame spans that V_all came from."""

    @property
    def active_heads(self) -> dict[int, list[int]]:
        return {layer: r.active.nonzero().flatten().tolist() for layer, r in self.records.items()}

    def attention_maps(self) -> dict[int, list[np.ndarray]]:
        """Per layer, one (active heads, utterance tokens, *grid) array per frame span: grid is
        (rows, cols), or (time, rows, cols) for a Qwen2.5-VL video chunk."""
        maps: dict[int, list[np.ndarray]] = {}
        for layer, record in self.records.items():
            if record.maps is None:
                continue
            arrays, at = [], 0
            for frame in self.frames:
                grid = frame.meta["grid"]
                size = int(np.prod(grid))
                part = record.maps[..., at:at + size]
                arrays.append(part.reshape(*part.shape[:2], *grid).numpy())
                at += size
            maps[layer] = arrays
        return maps

    def heat_map(self) -> AttentionMap | None:
        """The last frame's maps as one picture-sized grid: what `--attention` draws.

        Every active head of every biased layer counts once and every utterance token
        once; a video chunk's time slices are averaged (they are the turn's frames). None
        when no head was active or the turn had no frames.
        """
        last = [frames[-1] for frames in self.attention_maps().values() if frames]
        last = [a for a in last if a.shape[0]]
        if not last:
            return None
        grid = np.concatenate(last).mean(axis=(0, 1))
        if grid.ndim == 3:
            grid = grid.mean(axis=0)
        mean = float(grid.mean())
        if not mean > 0:
            return None
        t = self.frames[-1].meta.get("t")
        return AttentionMap(grid=(grid / mean).astype(np.float32),
                            heads=sum(a.shape[0] for a in last),
                            frame_pts=None if t is None else float(t))

    def save(self, path: str) -> None:
        """Attention maps as .npz: `L{layer}_F{frame}` -> (heads, tokens, *grid), plus
        `L{layer}_heads` (which heads) and `frame_times`."""
        arrays: dict[str, np.ndarray] = {
            "frame_times": np.array([f.meta.get("t", np.nan) for f in self.frames])}
        for layer, frames in self.attention_maps().items():
            arrays[f"L{layer}_heads"] = np.array(self.active_heads[layer])
            for i, a in enumerate(frames):
                arrays[f"L{layer}_F{i}"] = a
        np.savez_compressed(path, **arrays)


class Session:
    def __init__(self, backend: Backend, config: EngineConfig | None = None) -> None:
        self.backend, self.config = backend, config or EngineConfig()
        self.cache = growing_cache(backend.text_config)
        _require_full_attention(self.cache, backend.text_config)
        backend.model.set_attn_implementation(self._implementations(register()))
        self.ledger = Ledger()
        self.next_position = 0
        self.last_logits: torch.Tensor | None = None
        """Next-token logits after the last appended token."""
        self.layers = self.config.bias.layer_range(backend.text_config.num_hidden_layers)
        self.evictions = 0
        self.rebases = 0
        self.max_positions = self.config.max_positions or getattr(
            backend.text_config, "max_position_embeddings", None)
        self.budget = self.config.max_tokens
        if self.budget is None and self.max_positions is not None:
            self.budget = self.max_positions // 2

    def _implementations(self, name: str) -> str | dict[str, str]:
        # Only the text decoder is biased; a vision tower keeps sdpa.
        if self.backend.sees_pictures:
            return {"text_config": name, "vision_config": "sdpa"}
        return name

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    # --- the conversation -------------------------------------------------------------

    def append_system(self, text: str) -> Span:
        return self._append("system", self.backend.text(text))

    def append_frames(self, frames: Sequence[VideoFrame],
                      views: Sequence[Sequence[PlayerView]]) -> list[Span]:
        """Key frames with the players seen in each; prefills only the new tokens."""
        if len(frames) != len(views):
            raise ValueError(f"{len(frames)} frames but {len(views)} lists of players")
        chunks = self.backend.frames(frames, views)
        if not chunks:
            return []
        whole = chunks[0]
        for chunk in chunks[1:]:
            whole = whole + chunk
        self._make_room(whole.advance)
        # One prefill for all of them; the ledger still gets a span per chunk (a frame, or
        # with Qwen2.5-VL's video mode the turn's frames as one video).
        self._prefill(whole)
        spans, position = [], self.next_position
        for chunk in chunks:
            spans.append(self.ledger.append("frame", len(chunk), position, ids=chunk.ids,
                                            chunk=chunk, **chunk.meta))
            position += chunk.advance
        self.next_position = position
        self._evict()
        return spans

    def append_utterance(self, player: str | None, text: str, *, bias: bool = True,
                         export: bool = False) -> UtteranceReport:
        """The utterance as `P2: text`; biased toward P2's tokens in this turn's frames."""
        prefix = self.backend.text(f"{player or 'Someone'}:")
        chunk = prefix + self.backend.text(f" {text.strip()}\n")
        self._make_room(chunk.advance)
        frames = self.ledger.since_last("utterance", "frame")
        plan = self._plan(player, frames, range(len(prefix), len(chunk)), export) if bias else None
        span = self._append("utterance", chunk, plan, player=player, text=text,
                            biased=range(len(prefix), len(chunk)) if bias else None)
        return UtteranceReport(span, plan.records if plan else {}, frames)

    def _plan(self, player: str | None, frames: list[Span], queries: range,
              export: bool) -> BiasPlan | None:
        everyone = [i for f in frames for offs in f.meta["players"].values()
                    for i in f.indices(offs)]
        speaker = [i for f in frames for i in f.indices(f.meta["players"].get(player, []))]
        if not speaker or not self.layers:
            return None
        patches = None
        if export:
            patches = [f.start + f.meta["patches"] + k for f in frames
                       for k in range(int(np.prod(f.meta["grid"])))]
        device = self.backend.device

        def index(values: list[int]) -> torch.Tensor:
            return torch.tensor(sorted(set(values)), device=device)

        return BiasPlan(alpha=self.config.bias.alpha, layers=self.layers,
                        threshold=self.config.bias.threshold,
                        queries=torch.tensor(list(queries), device=device),
                        visual=index(everyone), speaker=index(speaker),
                        patches=None if patches is None else torch.tensor(patches, device=device))

    def _append(self, kind: SpanKind, chunk: Chunk, plan: BiasPlan | None = None,
                **meta: object) -> Span:
        self._make_room(chunk.advance)
        self._prefill(chunk, plan)
        span = self.ledger.append(kind, len(chunk), self.next_position, ids=chunk.ids,
                                  chunk=chunk, **meta)
        self.next_position += chunk.advance
        self._evict()
        return span

    @torch.no_grad()
    def _prefill(self, chunk: Chunk, plan: BiasPlan | None = None) -> None:
        extra = {} if plan is None else {"social_bias": plan}
        hidden = self._forward(chunk.embeds[None], chunk.positions[:, None], **extra)
        self.last_logits = self.backend.logits(hidden[0, -1]).float()

    def _forward(self, embeds: torch.Tensor, positions: torch.Tensor,
                 **kwargs: object) -> torch.Tensor:
        """Hidden states; `positions` (axes, batch, tokens) are counted from the next position."""
        return self.backend.decode(embeds, positions + self.next_position, self.cache, **kwargs)

    # --- questions ------------------------------------------------------------------

    def ask(self, question: str, candidates: Sequence[str]) -> list[float]:
        """Each candidate answer's mean log-probability per token after the conversation and
        the question (see `ask_many`)."""
        return self.ask_many([(question, candidates)])[0]

    @torch.no_grad()
    def ask_many(self, questions: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """Several questions with their candidate answers, all in one forward of one row.

        Every question starts at the same position after the conversation and every
        candidate at the same position after its question; a block mask lets each
        question see only the cache, and each candidate only the cache, its question
        and itself. So the cache is never copied per candidate, and the answers equal
        those of separate forwards. The cache is cropped back afterwards, bit for bit:
        the conversation never contains questions or answers.

        A candidate's score is the mean log-probability of its tokens, not their sum: a
        sum would favour answers with fewer tokens (" nobody" is one token where " P1" is
        two for SmolLM2's tokenizer), whatever the model thinks of them.
        """
        if not questions:
            return []
        asked, answers = [], []
        for question, candidates in questions:
            if not candidates:
                raise ValueError(f"{question!r}: ask needs at least one candidate")
            ids = [self.backend.token_ids(" " + c.strip()) for c in candidates]
            if any(not a for a in ids):
                raise ValueError(f"{question!r}: every candidate needs at least one token")
            asked.append(self.backend.text(question))
            answers.append(ids)
        embeds, positions = [], []
        for chunk, ids in zip(asked, answers, strict=True):
            flat = [t for a in ids for t in a]
            embeds += [chunk.embeds, self.backend.embed(flat)]
            after = self.backend.text_positions(max(map(len, ids))) + chunk.advance
            positions += [chunk.positions] + [after[:, :len(a)] for a in ids]
        mask = _question_mask(self.length, [(len(c), [len(a) for a in ids])
                                            for c, ids in zip(asked, answers, strict=True)],
                              self.backend.device)
        with self._scratch():
            hidden = self._forward(torch.cat(embeds)[None], torch.cat(positions, dim=1)[:, None],
                                   attention_mask=mask)
        logp = torch.log_softmax(self.backend.logits(hidden[0]).float(), -1)
        scores, row = [], 0
        for chunk, ids in zip(asked, answers, strict=True):
            last_question_row = row + len(chunk) - 1
            row += len(chunk)
            group = []
            for answer in ids:
                score = float(logp[last_question_row, answer[0]])
                score += sum(float(logp[row + i - 1, t]) for i, t in enumerate(answer) if i)
                group.append(score / len(answer))
                row += len(answer)
            scores.append(group)
        return scores

    @torch.no_grad()
    def generate(self, question: str, max_new_tokens: int = 32) -> str:
        """Greedy answer to a question; the cache is restored afterwards."""
        with self._scratch():
            asked = self.backend.text(question)
            hidden = self._forward(asked.embeds[None], asked.positions[:, None])
            position, out = asked.advance, []
            eos = self.backend.tokenizer.eos_token_id
            for _ in range(max_new_tokens):
                token = int(self.backend.logits(hidden[0, -1]).argmax())
                if token == eos:
                    break
                out.append(token)
                step = self.backend.text_positions(1) + position
                hidden = self._forward(self.backend.embed([token])[None], step[:, None])
                position += 1
            return self.backend.tokenizer.decode(out, skip_special_tokens=True)

    @contextmanager
    def _scratch(self) -> Iterator[None]:
        """Work on top of the cache, then crop the cache back to where it was. Only
        `_prefill` moves `last_logits`, so nothing else needs putting back."""
        length = self.length
        try:
            yield
        finally:
            if self.length > length:
                self.cache.crop(length - self.length)  # transformers 5: a negative count

    # --- eviction -------------------------------------------------------------------

    def _evict(self) -> None:
        budget = self.budget
        if budget is None or self.length <= budget:
            return
        target = int(budget * self.config.evict_to)
        doomed, length = [], self.length
        for span in self._eviction_order():
            if length <= target:
                break
            doomed.append(span)
            length -= len(span)
        if length > budget:
            raise ContextFull(
                f"context budget of {budget} tokens is below what must stay (system prompt, "
                f"the last {self.config.keep_turns} utterances and the frames of the turn being "
                f"built: {length}); raise engine.max_tokens")
        keep = torch.tensor(self.ledger.drop(doomed), device=self.backend.device)
        for layer in self.cache.layers:
            if isinstance(layer, GrowingLayer):
                layer.keep(keep)
            else:
                layer.keys = layer.keys.index_select(-2, keep)
                layer.values = layer.values.index_select(-2, keep)
        self.evictions += 1

    def _eviction_order(self) -> list[Span]:
        """What may go, first to last. A turn is its frames and then its utterance.

        The turn being built (frames after the last utterance) never goes: its utterance
        is still to be biased toward them. Nor do the system prompt and the last
        `keep_turns` utterances. Of the rest, the frames of older turns go first, then
        older utterances, and the frames of the kept turns only last; each oldest first.
        """
        spans = self.ledger.spans
        utterances = [i for i, s in enumerate(spans) if s.kind == "utterance"]
        building = utterances[-1] + 1 if utterances else 0
        keep = self.config.keep_turns
        if keep == 0:
            recent = building
        elif len(utterances) > keep:
            recent = utterances[-keep - 1] + 1
        else:
            recent = 0
        old = spans[:recent]
        return ([s for s in old if s.kind == "frame"] + [s for s in old if s.kind == "utterance"]
                + [s for s in spans[recent:building] if s.kind == "frame"])

    # --- positions ------------------------------------------------------------------

    def _make_room(self, advance: int) -> None:
        """Before positions pass the model's range, re-encode the kept conversation from 0.

        Eviction keeps positions (docs/engine.md), so they grow with the conversation: about
        90k an hour at the demo's pace, against 128k for Qwen2.5-VL and 8k for SmolLM2.
        A rebase costs one prefill of what is kept (at most the budget) and happens once
        per `max_positions - budget` positions.
        """
        limit = self.max_positions
        if limit is None or self.next_position + advance + HEADROOM <= limit:
            return
        kept = sum(span.meta["chunk"].advance for span in self.ledger.spans)
        if kept + advance + HEADROOM > limit:
            raise ContextFull(
                f"the model's {limit} positions cannot hold what the session keeps ({kept} "
                f"positions) and {advance} more; lower engine.max_tokens so that older turns "
                "are evicted")
        self._rebase()

    @torch.no_grad()
    def _rebase(self) -> None:
        """The kept spans again, in order, from position 0, each utterance biased as before
        toward the frames of its turn."""
        spans = self.ledger.spans
        self.cache = growing_cache(self.backend.text_config)
        self.ledger, self.next_position = Ledger(), 0
        for span in spans:
            meta = {k: v for k, v in span.meta.items() if k not in ("chunk", "ids")}
            chunk: Chunk = span.meta["chunk"]
            plan = None
            if span.kind == "utterance" and meta.get("biased") is not None:
                frames = self.ledger.since_last("utterance", "frame")
                plan = self._plan(meta["player"], frames, meta["biased"], export=False)
            self._prefill(chunk, plan)
            self.ledger.append(span.kind, len(chunk), self.next_position, ids=chunk.ids,
                               chunk=chunk, **meta)
            self.next_position += chunk.advance
        self.rebases += 1


def _require_full_attention(cache: DynamicCache, config: PretrainedConfig) -> None:
    """Refuse models whose cache keeps only part of the context in some layers.

    Sliding-window (Mistral, Gemma) or chunked layers drop old tokens by themselves, while
    the session indexes the whole conversation: the bias points at frames, eviction and
    the ledger at spans, by their place in the full sequence.
    """
    partial = [type(layer).__name__ for layer in cache.layers
               if not isinstance(layer, GrowingLayer)]
    if partial:
        raise ModelError(
            f"model type {config.model_type!r} keeps only a window of the context in "
            f"{len(partial)} of {len(cache.layers)} layers ({partial[0]}: sliding-window or "
            "chunked attention); the session needs full attention in every layer. Use a "
            "model without sliding_window, or one trained without it whose config.json sets "
            "it anyway (then set sliding_window to null there)")


def _question_mask(cached: int, groups: list[tuple[int, list[int]]],
                   device: torch.device) -> torch.Tensor:
    """(1, 1, rows, keys) True where a row may attend: the cache; its question causally;
    and for an answer, its whole question and itself causally."""
    rows = sum(q + sum(answers) for q, answers in groups)
    mask = torch.zeros(rows, cached + rows, dtype=torch.bool, device=device)
    mask[:, :cached] = True
    at = 0
    for question, answers in groups:
        end = at + question + sum(answers)
        mask[at:end, cached + at:cached + at + question] = True  # the question, for all
        for size in [question, *answers]:  # causal inside the question and each answer
            block = slice(cached + at, cached + at + size)
            mask[at:at + size, block] = torch.ones(size, size, dtype=torch.bool,
                                                   device=device).tril()
            at += size
    return mask[None, None]
