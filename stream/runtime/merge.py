"""The order in which a stage sees the items of its inputs (the module doc of
`stream.runtime` says why): ordered inputs merged by (pts, input rank, seq), unordered
ones taken in arrival order once the merge has gone past their time (or every merged
input has ended). Past, not at: an answer has its item's time, and the item may be
emitted at the progress its stage had already made, so a tie goes to the merged item.
The cost is one watermark step (0.05 s of media) of delay, and an answer whose merged
inputs stall right after its item waits until they move on or end."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from stream.frames import EndOfStream, Item, Watermark
from stream.runtime.edge import Edge


@dataclass(frozen=True)
class Step:
    item: Item
    """A data or control item, or a `Watermark` of the merged inputs."""
    progress: float
    """How far the stage's progress reaches once it has handled `item`."""


class InputMerge:
    def __init__(self, inputs: list[Edge], frontier: Callable[[], float]) -> None:
        """`frontier`: how far the stage's own outputs have come, read at each step (an
        unordered item waits for it)."""
        self._merged = [edge for edge in inputs if edge.ordered]
        self._loose = [edge for edge in inputs if not edge.ordered]
        self._frontier = frontier
        self._arrived = asyncio.Event()
        for edge in inputs:
            edge.arrived = self._arrived
        self._heads: list[Item | None] = [None] * len(self._merged)
        self._merging = bool(self._merged)
        self._waiting: deque[Item] = deque()
        """Items of unordered inputs, in arrival order, until the merge passes their time."""

    async def next(self) -> Step | None:
        """The next item to handle; None once every input has ended."""
        while True:
            self._arrived.clear()
            for edge in list(self._loose):
                while len(edge):
                    item = await edge.get()
                    if isinstance(item, EndOfStream):
                        self._loose.remove(edge)
                        break
                    if not isinstance(item, Watermark):
                        self._waiting.append(item)
            # An unordered item waits until the merge has gone past its time, so it follows
            # what it is about (a prediction, its turn, which has the same time and may be
            # emitted at the progress its stage had already made) and never moves progress
            # ahead of merged items still to come; the merge itself never waits for it.
            frontier = self._frontier()
            if self._waiting and (not self._merging or self._waiting[0].pts < frontier):
                return Step(self._waiting.popleft(), frontier)
            heads = self._heads
            for i, edge in enumerate(self._merged):
                if heads[i] is None and len(edge):
                    heads[i] = await edge.get()
            if self._merging and all(head is not None for head in heads):
                rank = min(range(len(heads)), key=lambda i: _merge_key(heads[i], i))
                item = heads[rank]
                assert item is not None
                if isinstance(item, EndOfStream):
                    self._merging = False
                    continue
                heads[rank] = None
                return Step(item, item.pts)
            if not self._merging and not self._loose and not self._waiting:
                return None
            await self._arrived.wait()


def _merge_key(item: Item | None, rank: int) -> tuple[float, int, int]:
    assert item is not None
    return (item.pts, rank, item.seq)
