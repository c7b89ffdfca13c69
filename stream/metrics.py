"""Per-stage counters the runtime keeps, and their rendering as a table."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from rich.table import Table

KEPT = 4096
"""Latencies kept per stage: a uniform sample of all calls (a reservoir), so that a live
session of a day holds as few as a replay (a list of every call grew by about 45 MB an
hour)."""


@dataclass
class StageMetrics:
    """What one stage did during a run. Latency is wall time per `process` call."""

    name: str
    items_in: int = 0
    items_out: int = 0
    dropped: int = 0
    max_queue_depth: int = 0
    calls: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)
    """At most `KEPT`, each call equally likely to be among them."""
    _draw: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def record(self, seconds: float) -> None:
        self.calls += 1
        if len(self.latencies) < KEPT:
            self.latencies.append(seconds)
        elif (slot := self._draw.randrange(self.calls)) < KEPT:
            self.latencies[slot] = seconds

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies:
            return None
        return float(np.percentile(np.asarray(self.latencies), q) * 1e3)

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "items_in": self.items_in,
            "items_out": self.items_out,
            "dropped": self.dropped,
            "max_queue_depth": self.max_queue_depth,
            "latency_p50_ms": self.percentile_ms(50),
            "latency_p95_ms": self.percentile_ms(95),
        }


def metrics_table(metrics: dict[str, StageMetrics], title: str = "stage metrics") -> Table:
    table = Table(title=title)
    for column in ("stage", "in", "out", "dropped", "max queue", "p50 ms", "p95 ms"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, m in metrics.items():
        p50, p95 = m.percentile_ms(50), m.percentile_ms(95)
        table.add_row(
            name,
            str(m.items_in),
            str(m.items_out),
            str(m.dropped),
            str(m.max_queue_depth),
            "-" if p50 is None else f"{p50:.3f}",
            "-" if p95 is None else f"{p95:.3f}",
        )
    return table
