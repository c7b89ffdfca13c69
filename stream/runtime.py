"""A small stage runtime on asyncio.

Sources and stages are joined by bounded edges. Each edge declares its policy:
`block` loses nothing (the producer waits), `latest` keeps only the newest data
items (for live video) and counts what it drops. Control items are never
dropped.

A stage with several inputs sees their items merged in (pts, input rank, seq)
order: it waits until every open input has an item at its head and takes the
smallest. Stages forward `Watermark`s so that a quiet input (VAD during a long
utterance) does not hold the others back. The merge order depends only on
media time, so a paced replay and an as-fast-as-possible replay feed every
stage the same sequence and produce the same outputs.

An input connected with `ordered=False` stays out of that merge: the merge
never waits for it, and each of its items is taken, in arrival order, as soon
as the merge has reached the item's time. A sink that takes the engine's
predictions beside turns and per-frame speakers does so: a slow model delays
only the predictions, and a prediction still follows its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from rich.table import Table

from stream.frames import ControlItem, DataItem, EndOfStream, Item, Watermark
from stream.metrics import StageMetrics, metrics_table

log = logging.getLogger(__name__)

Policy = Literal["block", "latest"]
WATERMARK_STEP = 0.05
"""Seconds of progress between two watermarks on a quiet edge."""
CANCEL_TIMEOUT = 5.0
T = TypeVar("T")


class Stage(ABC):
    """A step of the pipeline: typed items in, typed items out.

    Keep the algorithm in a pure, synchronous core; the stage only adapts it.
    Every output must have `pts` no earlier than the item that produced it.
    """

    name: str = "stage"
    inputs: tuple[type[Item], ...] = ()
    """What a sink wants from the pipeline it joins (compositions read this)."""

    async def start(self) -> None:
        """Called before any data flows, sinks first."""

    @abstractmethod
    async def process(self, item: Item) -> Sequence[Item]:
        """Consume one item in merge order; return what it produced."""

    async def finish(self) -> Sequence[Item]:
        """End of stream on every input: return whatever is still pending."""
        return ()

    def holdback(self) -> float | None:
        """The earliest media time this stage may still emit at, while it holds something
        that could still come out whatever arrives next (an open speech segment that ends
        when its audio does); None otherwise. The stage's progress never passes it, so
        what it emits later is never behind what it already promised."""
        return None

    async def advance(self, pts: float) -> Sequence[Item]:
        """Progress on the merged inputs reached `pts` without an item (a watermark): for a
        stage whose pending state ends when time passes, e.g. speech whose audio stopped
        while the video goes on."""
        return ()

    async def stop(self) -> None:
        """Always called once the stage is done, also after an error (close files here)."""

    def hurry(self) -> None:
        """The user asked again to stop while the pipeline was stopping: cut short what
        `stop` waits for (the MQTT sink's drain), keeping what is kept anyway."""


class Source(ABC):
    """Produces items; shared interface for files, pipes and live feeds."""

    name: str = "source"
    uri: str = ""

    @abstractmethod
    def items(self) -> AsyncIterator[Item]:
        """Yield items in non-decreasing pts order per type."""

    def stop(self) -> bool:
        """Asked to stop early: True if the source will end by itself soon, having handed
        over everything it already read (a live feed); False to be cut off at once."""
        return False

    async def close(self) -> None:
        """Release the underlying resource."""


class PipelineError(RuntimeError):
    """A stage failed; names the stage and the media time it was working on."""

    def __init__(self, stage: str, pts: float | None, cause: BaseException, *,
                 stopping: bool = False) -> None:
        if stopping:
            where = "while stopping"
        else:
            where = "before any media" if pts is None else f"at media time {pts:.3f}s"
        super().__init__(f"stage '{stage}' failed {where}: {cause}")
        self.stage = stage
        self.pts = pts
        self.cause = cause


class Edge:
    """A bounded FIFO between two nodes with a drop policy for data items."""

    def __init__(self, src: str, dst: str, types: tuple[type[Item], ...],
                 policy: Policy = "block", maxsize: int = 64, ordered: bool = True) -> None:
        if maxsize < 1:
            raise ValueError(f"edge {src}->{dst}: maxsize must be >= 1, got {maxsize}")
        if policy not in ("block", "latest"):
            raise ValueError(f"edge {src}->{dst}: unknown policy {policy!r}")
        self.src, self.dst, self.types = src, dst, types
        self.policy: Policy = policy
        self.maxsize = maxsize
        self.ordered = ordered
        """False: not merged by media time; the consumer takes items as they arrive."""
        self.arrived: asyncio.Event | None = None
        """Set on every put; the consuming stage waits on it for any of its inputs."""
        self.dropped = 0
        self.max_depth = 0
        self.last_pts = float("-inf")
        self._items: deque[Item] = deque()
        self._data = 0
        self._changed = asyncio.Condition()

    def accepts(self, item: Item) -> bool:
        return isinstance(item, (ControlItem, *self.types))

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: Item) -> None:
        async with self._changed:
            if isinstance(item, DataItem):
                if self.policy == "latest" and self._data >= self.maxsize:
                    self._drop_oldest_data()
                while self._data >= self.maxsize:
                    await self._changed.wait()
                self._data += 1
            self._items.append(item)
            self.last_pts = max(self.last_pts, item.pts)
            self.max_depth = max(self.max_depth, len(self._items))
            self._changed.notify_all()
        if self.arrived is not None:
            self.arrived.set()

    async def get(self) -> Item:
        async with self._changed:
            while not self._items:
                await self._changed.wait()
            item = self._items.popleft()
            if isinstance(item, DataItem):
                self._data -= 1
            self._changed.notify_all()
            return item

    def _drop_oldest_data(self) -> None:
        for i, queued in enumerate(self._items):
            if isinstance(queued, DataItem):
                del self._items[i]
                self._data -= 1
                self.dropped += 1
                return


@dataclass
class _Node:
    name: str
    runnable: Stage | Source
    inputs: list[Edge] = field(default_factory=list)
    outputs: list[Edge] = field(default_factory=list)
    metrics: StageMetrics = field(init=False)
    current_pts: float | None = None
    frontier: float = float("-inf")
    winding_down: bool = False
    """A source asked to stop that still hands over what it already read."""

    def __post_init__(self) -> None:
        self.metrics = StageMetrics(self.name)


Observer = Callable[[str, Item], None]
"""Called with (node name, item) for every item a node emits; must not mutate it."""


class Pipeline:
    """Owns the graph and its lifecycle: start, run until drained, stop."""

    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}
        self._observers: list[Observer] = []
        self._stop_requested = asyncio.Event()
        self._shutting_down = False
        self.stopped_by: int | None = None
        """The signal that asked the run to stop, if one did."""

    # -- building -------------------------------------------------------
    def add(self, runnable: Stage | Source, name: str | None = None) -> str:
        name = name or runnable.name
        if name in self._nodes:
            raise ValueError(f"a node named {name!r} is already in the pipeline")
        self._nodes[name] = _Node(name, runnable)
        return name

    def connect(self, src: str, dst: str, *types: type[Item], policy: Policy = "block",
                maxsize: int = 64, ordered: bool = True) -> Edge:
        """Route items of `types` from `src` to `dst`; control items always follow.

        `ordered=False` keeps this input out of the media-time merge (see the module doc):
        for a stage whose outputs do not depend on the order of this input's items relative
        to the others, such as a sink.
        """
        if isinstance(self._nodes[dst].runnable, Source):
            raise ValueError(f"{dst!r} is a source and takes no input")
        edge = Edge(src, dst, types or (DataItem,), policy, maxsize, ordered)
        self._nodes[src].outputs.append(edge)
        self._nodes[dst].inputs.append(edge)
        return edge

    @property
    def stages(self) -> list[Stage]:
        return [n.runnable for n in self._nodes.values() if isinstance(n.runnable, Stage)]

    @property
    def edges(self) -> list[Edge]:
        return [edge for node in self._nodes.values() for edge in node.outputs]

    def observe(self, observer: Observer) -> None:
        self._observers.append(observer)

    # -- control --------------------------------------------------------
    def request_stop(self) -> None:
        """Stop reading sources; what is in flight drains and sinks flush."""
        self._stop_requested.set()
        for node in self._nodes.values():
            if isinstance(node.runnable, Source):
                node.winding_down = node.runnable.stop()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    DRAINING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    """Ctrl-C, and what service managers and closed terminals send."""

    @contextlib.contextmanager
    def signals_drain(self) -> Iterator[None]:
        """The first SIGINT, SIGTERM or SIGHUP drains the graph (during the final stop, it
        cuts short what the stages still wait for, such as the MQTT drain); the next one
        interrupts at once, as that signal does by default."""
        loop = asyncio.get_running_loop()

        def on_signal(number: int) -> None:
            if self.stop_requested:
                for each in self.DRAINING_SIGNALS:
                    loop.remove_signal_handler(each)
                signal.raise_signal(number)
                return
            self.stopped_by = number
            if self._shutting_down:
                log.warning("interrupted while stopping: not waiting any longer (again to "
                            "abort)")
                for stage in self.stages:
                    stage.hurry()
            else:
                log.warning("%s: draining what is in flight (again to abort)",
                            signal.Signals(number).name)
            self.request_stop()

        for number in self.DRAINING_SIGNALS:
            loop.add_signal_handler(number, on_signal, number)
        try:
            yield
        finally:
            for number in self.DRAINING_SIGNALS:
                loop.remove_signal_handler(number)

    # -- running --------------------------------------------------------
    async def run(self) -> None:
        """Run until every source is exhausted and every stage drained."""
        self._check_graph()
        stages = [n for n in self._nodes.values() if isinstance(n.runnable, Stage)]
        started: list[_Node] = []
        failed = False
        try:
            for node in reversed(stages):  # sinks were added last: they start first
                node.current_pts = None
                await self._guard(node, node.runnable.start())
                started.append(node)
            await self._run_tasks()
        except BaseException:
            failed = True
            raise
        finally:
            problems = await self._shut_down(started)
            if problems and not failed:
                # The run itself went well, but something was not closed cleanly (an output
                # file, the MQTT spool): what it holds may be incomplete, so the run fails.
                raise problems[0]

    async def _shut_down(self, started: list[_Node]) -> list[PipelineError]:
        """Stop every started stage and close every source, whatever fails on the way; each
        failure is logged (the first one is raised by `run` when nothing else failed)."""
        self._shutting_down = True
        closing = [(node, node.runnable.stop) for node in started] + [
            (node, node.runnable.close) for node in self._nodes.values()
            if isinstance(node.runnable, Source)]
        problems = []
        for node, close in closing:
            try:
                await close()
            except Exception as exc:
                problem = PipelineError(node.name, None, exc, stopping=True)
                log.error("%s", problem)
                problems.append(problem)
        return problems

    async def _run_tasks(self) -> None:
        tasks = {
            asyncio.create_task(self._run_node(node), name=node.name): node
            for node in self._nodes.values()
        }
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                failed = [t for t in done if not t.cancelled() and t.exception() is not None]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
        finally:
            await self._cancel(tasks)

    async def _cancel(self, tasks: dict[asyncio.Task[None], _Node]) -> None:
        live = [t for t in tasks if not t.done()]
        for task in live:
            task.cancel()
        if not live:
            return
        _, still = await asyncio.wait(live, timeout=CANCEL_TIMEOUT)
        for task in still:
            log.warning("stage %s did not stop within %.0fs of cancel", task.get_name(),
                        CANCEL_TIMEOUT)

    async def _guard(self, node: _Node, work: Awaitable[T]) -> T:
        try:
            return await work
        except (asyncio.CancelledError, PipelineError, StopAsyncIteration):
            raise
        except Exception as exc:
            raise PipelineError(node.name, node.current_pts, exc) from exc

    async def _run_node(self, node: _Node) -> None:
        if isinstance(node.runnable, Source):
            await self._run_source(node, node.runnable)
        else:
            await self._run_stage(node, node.runnable)

    async def _run_source(self, node: _Node, source: Source) -> None:
        items = source.items()
        try:
            while not self.stop_requested or node.winding_down:
                try:
                    item = await self._guard(node, anext(items))
                except StopAsyncIteration:
                    break
                node.current_pts = item.pts
                await self._emit(node, [item], item.pts)
        finally:
            await items.aclose()
        await self._end(node)

    async def _run_stage(self, node: _Node, stage: Stage) -> None:
        merged = [edge for edge in node.inputs if edge.ordered]
        loose = [edge for edge in node.inputs if not edge.ordered]
        arrived = asyncio.Event()
        for edge in node.inputs:
            edge.arrived = arrived
        heads: list[Item | None] = [None] * len(merged)
        merging = bool(merged)
        waiting: deque[Item] = deque()
        """Items of unordered inputs, in arrival order, until the merge reaches their time."""
        while True:
            arrived.clear()
            for edge in list(loose):
                while len(edge):
                    item = await edge.get()
                    if isinstance(item, EndOfStream):
                        loose.remove(edge)
                        break
                    if not isinstance(item, Watermark):
                        waiting.append(item)
            # An unordered item waits until the merge has reached its time, so it follows
            # what it is about (a prediction, its turn) and never moves progress ahead of
            # merged items still to come; the merge itself never waits for it.
            while waiting and (not merging or waiting[0].pts <= node.frontier):
                await self._process(node, stage, waiting.popleft(), node.frontier)
            for i, edge in enumerate(merged):
                if heads[i] is None and len(edge):
                    heads[i] = await edge.get()
            if merging and all(head is not None for head in heads):
                rank = min(range(len(heads)), key=lambda i: _merge_key(heads[i], i))
                item = heads[rank]
                assert item is not None
                if isinstance(item, EndOfStream):
                    merging = False
                    continue
                heads[rank] = None
                node.current_pts = item.pts
                if isinstance(item, Watermark):
                    before = stage.holdback()
                    outputs = await self._guard(node, stage.advance(item.pts))
                    await self._emit(node, outputs, _held(item.pts, before, stage.holdback()))
                else:
                    await self._process(node, stage, item, item.pts)
                continue
            if not merging and not loose and not waiting:
                break
            await arrived.wait()
        await self._emit(node, await self._guard(node, stage.finish()), node.frontier)
        await self._end(node)

    async def _process(self, node: _Node, stage: Stage, item: Item, progress: float) -> None:
        node.current_pts = item.pts
        node.metrics.items_in += 1
        before = stage.holdback()
        began = time.perf_counter()
        outputs = await self._guard(node, stage.process(item))
        node.metrics.record(time.perf_counter() - began)
        await self._emit(node, outputs, _held(progress, before, stage.holdback()))

    async def _emit(self, node: _Node, outputs: Sequence[Item], consumed_pts: float) -> None:
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

    async def _end(self, node: _Node) -> None:
        for edge in node.outputs:
            await edge.put(EndOfStream(source=node.name))

    def _check_graph(self) -> None:
        for node in self._nodes.values():
            if isinstance(node.runnable, Stage) and not node.inputs:
                raise ValueError(f"stage {node.name!r} has no input edge")

    # -- reporting ------------------------------------------------------
    def stage_metrics(self) -> dict[str, StageMetrics]:
        for node in self._nodes.values():
            node.metrics.dropped = sum(e.dropped for e in node.inputs)
            node.metrics.max_queue_depth = max((e.max_depth for e in node.inputs), default=0)
        return {name: node.metrics for name, node in self._nodes.items()}

    def metrics(self) -> dict[str, dict[str, float | int | None]]:
        return {name: m.as_dict() for name, m in self.stage_metrics().items()}

    def metrics_table(self) -> Table:
        return metrics_table(self.stage_metrics())


def _held(progress: float, *holdbacks: float | None) -> float:
    """How far a stage has come: what it consumed, but never past its holdback before or
    after the step (what it emits in the step is checked against this)."""
    return min([progress, *(h for h in holdbacks if h is not None)])


def _merge_key(item: Item | None, rank: int) -> tuple[float, int, int]:
    assert item is not None
    return (item.pts, rank, item.seq)
