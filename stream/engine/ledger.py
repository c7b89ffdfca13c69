"""What each span of the cached sequence is, so the cache can be read, cut and checked."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

SpanKind = Literal["system", "frame", "utterance", "question"]


@dataclass(frozen=True)
class Span:
    kind: SpanKind
    start: int
    end: int
    """Cache indices [start, end); they shift down when earlier spans are evicted."""
    position: int = 0
    """The rotary position of the span's first token. Positions never change (docs/engine.md)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Always `ids`, and in a session `chunk` (the prefilled embeddings and relative
    positions, kept so that a rebase can re-encode the span). For frames: `t`, `grid` (rows,
    cols of visual tokens; time, rows, cols for a Qwen2.5-VL video chunk), `patches` (offset
    of the first visual token inside the span) and `players` (player -> offsets of their
    tokens). For utterances: `player`, `text`, `biased` (the rows that were biased, or
    None)."""

    def __len__(self) -> int:
        return self.end - self.start

    def indices(self, offsets: list[int] | None = None) -> list[int]:
        """Cache indices of the whole span, or of the given offsets inside it."""
        if offsets is None:
            return list(range(self.start, self.end))
        return [self.start + o for o in offsets]


class Ledger:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    @property
    def length(self) -> int:
        return self.spans[-1].end if self.spans else 0

    def append(self, kind: SpanKind, tokens: int, position: int = 0, **meta: Any) -> Span:
        if tokens <= 0:
            raise ValueError(f"a {kind} span needs at least one token")
        span = Span(kind, self.length, self.length + tokens, position, meta)
        self.spans.append(span)
        return span

    def of(self, kind: SpanKind) -> list[Span]:
        return [s for s in self.spans if s.kind == kind]

    def since_last(self, kind: SpanKind, of_kind: SpanKind) -> list[Span]:
        """Spans of `of_kind` after the last span of `kind` (all of them if there is none)."""
        last = max((i for i, s in enumerate(self.spans) if s.kind == kind), default=-1)
        return [s for s in self.spans[last + 1:] if s.kind == of_kind]

    def drop(self, doomed: list[Span]) -> list[int]:
        """Remove spans and shift the later ones down; returns the cache indices kept."""
        gone = {id(s) for s in doomed}
        kept: list[int] = []
        spans: list[Span] = []
        for span in self.spans:
            if id(span) in gone:
                continue
            start = len(kept)
            kept.extend(range(span.start, span.end))
            spans.append(replace(span, start=start, end=len(kept)))
        self.spans = spans
        return kept
