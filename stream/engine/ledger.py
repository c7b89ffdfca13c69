"""What each span of the cached sequence is, so the cache can be read, cut and checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SpanKind = Literal["system", "frame", "player", "utterance", "question"]


@dataclass(frozen=True)
class Span:
    kind: SpanKind
    start: int
    end: int
    """Token positions [start, end) in the cache."""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.end - self.start


class Ledger:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    @property
    def length(self) -> int:
        return self.spans[-1].end if self.spans else 0

    def append(self, kind: SpanKind, tokens: int, **meta: Any) -> Span:
        if tokens <= 0:
            raise ValueError(f"a {kind} span needs at least one token")
        span = Span(kind, self.length, self.length + tokens, meta)
        self.spans.append(span)
        return span

    def of(self, kind: SpanKind) -> list[Span]:
        return [s for s in self.spans if s.kind == kind]
