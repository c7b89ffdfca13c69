"""Per-stage counters the runtime keeps, and their rendering as a table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rich.table import Table


@dataclass
class StageMetrics:
    """What one stage did during a run. Latency is wall time per `process` call."""

    name: str
    items_in: int = 0
    items_out: int = 0
    dropped: int = 0
    max_queue_depth: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)

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
