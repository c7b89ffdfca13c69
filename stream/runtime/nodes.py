"""Running one node of a pipeline: a source's items out onto its edges, a stage's merged
inputs through it, and what each emits checked (never back in time), observed and
forwarded, with watermarks on quiet edges."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from stream.frames import EndOfStream, Item, Watermark
from stream.runtime.graph import Node
from stream.runtime.merge import InputMerge
from stream.runtime.stage import PipelineError, Source, Stage

WATERMARK_STEP = 0.05
"""Seconds of progress between two watermarks on a quiet edge."""
T = TypeVar("T")

Observer = Callable[[str, Item], None]
"""Called with (node name, item) for every item a node emits; must not mutate it."""


class NodeRunner:
    def __init__(self, observers: list[Observer], stopping: Callable[[], bool]) -> None:
        """`stopping`: whether the pipeline was asked to stop (sources then stop reading,
        but for one winding down)."""
        self._observers = observers
        self._stopping = stopping

    async def guard(self, node: Node, work: Awaitable[T]) -> T:
        """`work` of `node`; a failure is a PipelineError naming the node and its media time."""
        try:
            return await work
        except (asyncio.CancelledError, PipelineError, StopAsyncIteration):
            raise
        except Exception as exc:
            raise PipelineError(node.name, node.current_pts, exc) from exc

    async def run(self, node: Node) -> None:
        if isinstance(node.runnable, Source):
            await self._run_source(node, node.runnable)
        else:
            await self._run_stage(node, node.runnable)

    async def _run_source(self, node: Node, source: Source) -> None:
        items = source.items()
        try:
            while not self._stopping() or node.winding_down:
                try:
                    item = await self.guard(node, anext(items))
                except StopAsyncIteration:
                    break
                node.current_pts = item.pts
                await self._emit(node, [item], item.pts)
        finally:
            await items.aclose()
        await self._end(node)

    async def _run_stage(self, node: Node, stage: Stage) -> None:
        merge = InputMerge(node.inputs, lambda: node.frontier)
        while (step := await merge.next()) is not None:
            item = step.item
            if isinstance(item, Watermark):
                node.current_pts = item.pts
                before = stage.holdback()
                outputs = await self.guard(node, stage.advance(item.pts))
                await self._emit(node, outputs, _held(item.pts, before, stage.holdback()))
            else:
                await self._process(node, stage, item, step.progress)
        await self._emit(node, await self.guard(node, stage.finish()), node.frontier)
        await self._end(node)

    async def _process(self, node: Node, stage: Stage, item: Item, progress: float) -> None:
        node.current_pts = item.pts
        node.metrics.items_in += 1
        before = stage.holdback()
        began = time.perf_counter()
        outputs = await self.guard(node, stage.process(item))
        node.metrics.record(time.perf_counter() - began)
        await self._emit(node, outputs, _held(progress, before, stage.holdback()))

    async def _emit(self, node: Node, outputs: Sequence[Item], consumed_pts: float) -> None:
        floor = max(node.frontier, consumed_pts)
        for item in outputs:
            if item.pts < floor:
                raise PipelineError(node.name, node.current_pts, RuntimeError(
                    f"emitted {type(item).__name__} at {item.pts:.3f}s after progress "
                    f"had reached {floor:.3f}s (outputs must not go back in time)"))
            node.frontier = item.pts
            node.metrics.items_out += 1
            for observer in self._observers:
                observer(node.name, item)
            for edge in node.outputs:
                if edge.accepts(item):
                    await edge.put(item)
        node.frontier = max(node.frontier, consumed_pts)
        for edge in node.outputs:
            if node.frontier >= edge.last_pts + WATERMARK_STEP:
                await edge.put(Watermark(pts=node.frontier, source=node.name))

    async def _end(self, node: Node) -> None:
        for edge in node.outputs:
            await edge.put(EndOfStream(source=node.name))


def _held(progress: float, *holdbacks: float | None) -> float:
    """How far a stage has come: what it consumed, but never past its holdback before or
    after the step (what it emits in the step is checked against this)."""
    return min([progress, *(h for h in holdbacks if h is not None)])
