"""The stage runtime: queue policies, merge order, errors, cancellation, draining."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from stream.frames import DataItem, EndOfStream, Item, Watermark
from stream.runtime import Edge, Pipeline, PipelineError, Source, Stage


@dataclass(frozen=True, kw_only=True)
class Num(DataItem):
    value: int


class Numbers(Source):
    def __init__(self, name: str, times: Sequence[float], delay: float = 0.0,
                 jitter: random.Random | None = None, forever: bool = False) -> None:
        self.name, self.times, self.delay, self.jitter = name, times, delay, jitter
        self.forever = forever
        self.closed = False

    async def items(self) -> AsyncIterator[Item]:
        i = 0
        while i < len(self.times) or self.forever:
            pts = self.times[i] if i < len(self.times) else float(i)
            yield Num(pts=pts, value=i, source=self.name, seq=i)
            i += 1
            pause = self.delay if self.jitter is None else self.jitter.random() * self.delay
            await asyncio.sleep(pause)

    async def close(self) -> None:
        self.closed = True


class Record(Stage):
    def __init__(self, name: str = "record", delay: float = 0.0, fail_at: float | None = None):
        self.name, self.delay, self.fail_at = name, delay, fail_at
        self.seen: list[Num] = []
        self.stopped = False

    async def process(self, item: Item) -> Sequence[Item]:
        if self.fail_at is not None and item.pts >= self.fail_at:
            raise ValueError("boom")
        assert isinstance(item, Num)
        self.seen.append(item)
        if self.delay:
            await asyncio.sleep(self.delay)
        return ()

    async def stop(self) -> None:
        self.stopped = True


class Quiet(Stage):
    """Swallows everything but every 100th item: a VAD in the middle of a long utterance."""

    name = "quiet"

    async def process(self, item: Item) -> Sequence[Item]:
        assert isinstance(item, Num)
        return [item] if item.value % 100 == 0 else []


def _fan_out(source: Source, *sinks: Stage) -> Pipeline:
    """One source feeding each of the sinks."""
    pipe = Pipeline()
    pipe.add(source)
    for sink in sinks:
        pipe.add(sink)
        pipe.connect(source.name, sink.name, Num)
    return pipe


def _graph(source: Source, sink: Stage, policy: str = "block", maxsize: int = 4) -> Pipeline:
    pipe = Pipeline()
    pipe.add(source)
    pipe.add(sink)
    pipe.connect(source.name, sink.name, Num, policy=policy, maxsize=maxsize)
    return pipe


async def test_block_policy_loses_nothing_under_a_slow_consumer() -> None:
    sink = Record(delay=0.001)
    pipe = _graph(Numbers("src", [i * 0.01 for i in range(200)]), sink, maxsize=4)
    await pipe.run()
    assert [n.value for n in sink.seen] == list(range(200))
    metrics = pipe.metrics()["record"]
    assert metrics["dropped"] == 0
    assert metrics["items_in"] == 200
    assert metrics["max_queue_depth"] <= 4 + 2  # data bound plus queued control items


async def test_latest_policy_keeps_the_newest_and_counts_drops() -> None:
    sink = Record(delay=0.005)
    pipe = _graph(Numbers("src", [i * 0.01 for i in range(100)]), sink, "latest", maxsize=2)
    await pipe.run()
    values = [n.value for n in sink.seen]
    assert values[-1] == 99, "the newest item always survives"
    assert values == sorted(values) and len(set(values)) == len(values)
    dropped = pipe.metrics()["record"]["dropped"]
    assert dropped > 0
    assert dropped + len(values) == 100


async def test_latest_edge_never_drops_control_items() -> None:
    edge = Edge("a", "b", (Num,), policy="latest", maxsize=2)
    await edge.put(Watermark(pts=0.5))
    for i in range(5):
        await edge.put(Num(pts=float(i), value=i))
    await edge.put(EndOfStream())
    got = [await edge.get() for _ in range(len(edge))]
    assert isinstance(got[0], Watermark) and isinstance(got[-1], EndOfStream)
    assert [g.value for g in got if isinstance(g, Num)] == [3, 4]
    assert edge.dropped == 3


async def test_merge_order_depends_on_media_time_only() -> None:
    orders = []
    for seed in (1, 2, 3):
        a = Numbers("a", [i * 0.1 for i in range(30)], 0.002, random.Random(seed))
        b = Numbers("b", [i * 0.07 for i in range(40)], 0.002, random.Random(seed + 10))
        sink = Record()
        pipe = Pipeline()
        pipe.add(a)
        pipe.add(b)
        pipe.add(sink)
        pipe.connect("a", "record", Num, maxsize=2)
        pipe.connect("b", "record", Num, maxsize=2)
        await pipe.run()
        orders.append([(n.source, n.value) for n in sink.seen])
        assert [n.pts for n in sink.seen] == sorted(n.pts for n in sink.seen)
    assert orders[0] == orders[1] == orders[2]
    assert len(orders[0]) == 70


async def test_watermarks_keep_a_quiet_branch_from_stalling_the_merge() -> None:
    # source -> quiet -> sink and source -> sink; the direct edge holds 2 items only.
    source = Numbers("src", [i * 0.02 for i in range(1000)])
    sink = Record()
    pipe = Pipeline()
    pipe.add(source)
    pipe.add(Quiet())
    pipe.add(sink)
    pipe.connect("src", "quiet", Num, maxsize=2)
    pipe.connect("quiet", "record", Num, maxsize=2)
    pipe.connect("src", "record", Num, maxsize=2)
    await asyncio.wait_for(pipe.run(), timeout=30)
    assert len(sink.seen) == 1000 + 10


async def test_a_failing_stage_stops_the_graph_and_is_named() -> None:
    source = Numbers("src", [i * 0.5 for i in range(100)], forever=True)
    upstream, failing = Record("upstream"), Record("failing", fail_at=1.5)
    pipe = _fan_out(source, upstream, failing)
    with pytest.raises(PipelineError) as info:
        await asyncio.wait_for(pipe.run(), timeout=10)
    assert info.value.stage == "failing"
    assert info.value.pts == 1.5
    assert "stage 'failing' failed at media time 1.500s: boom" in str(info.value)
    assert upstream.stopped and failing.stopped and source.closed
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not others, "no task may outlive the pipeline"


async def test_cancel_from_outside_cancels_waits_and_reraises() -> None:
    source = Numbers("src", [], delay=0.001, forever=True)
    sink = Record()
    pipe = _graph(source, sink)
    task = asyncio.create_task(pipe.run())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.stopped and source.closed
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not others


async def test_request_stop_drains_everything_already_read() -> None:
    source = Numbers("src", [], delay=0.001, forever=True)
    sink = Record(delay=0.002)
    pipe = _graph(source, sink, maxsize=8)
    task = asyncio.create_task(pipe.run())
    await asyncio.sleep(0.2)
    pipe.request_stop()
    await asyncio.wait_for(task, timeout=10)
    emitted = pipe.metrics()["src"]["items_out"]
    assert emitted > 0
    assert len(sink.seen) == emitted, "every item read before the stop reached the sink"


class Backwards(Stage):
    name = "backwards"

    async def process(self, item: Item) -> Sequence[Item]:
        return [Num(pts=item.pts - 1.0, value=0)]


async def test_output_that_goes_back_in_time_is_an_error() -> None:
    pipe = Pipeline()
    pipe.add(Numbers("src", [1.0, 2.0, 3.0]))
    pipe.add(Backwards())
    pipe.add(Record())
    pipe.connect("src", "backwards", Num)
    pipe.connect("backwards", "record", Num)
    with pytest.raises(PipelineError, match="go back in time"):
        await pipe.run()


class Slow(Stage):
    """Answers each item after `delay` seconds of wall time: a model on a busy machine."""

    name = "slow"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def process(self, item: Item) -> Sequence[Item]:
        await asyncio.sleep(self.delay)
        assert isinstance(item, Num)
        return [Num(pts=item.pts, value=1000 + item.value)]


class Arrivals(Stage):
    name = "arrivals"

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    async def process(self, item: Item) -> Sequence[Item]:
        assert isinstance(item, Num)
        self.seen.append((item.value, asyncio.get_running_loop().time()))
        return ()


def _beside_a_slow_stage(count: int, ordered: bool) -> tuple[Pipeline, Arrivals]:
    """A source feeding a sink directly and through a stage that takes 0.2 s an item."""
    pipe = Pipeline()
    pipe.add(Numbers("src", [i * 0.1 for i in range(count)], delay=0.01))
    pipe.add(Slow(0.2))
    sink = Arrivals()
    pipe.add(sink)
    pipe.connect("src", "slow", Num)
    pipe.connect("src", "arrivals", Num)
    pipe.connect("slow", "arrivals", Num, ordered=ordered)
    return pipe, sink


async def test_an_unordered_input_never_holds_back_the_merge() -> None:
    pipe, sink = _beside_a_slow_stage(20, ordered=False)
    began = asyncio.get_running_loop().time()
    await pipe.run()
    values = [v for v, _ in sink.seen]
    # The source's 20 items reach the sink in 0.2 s; the slow stage's answers take 4 s.
    last_fast = max(t for v, t in sink.seen if v < 1000)
    assert last_fast - began < 1.0
    assert sorted(values) == [*range(20), *range(1000, 1020)]
    # Each answer follows the item it answers (same media time, taken after it).
    assert all(values.index(1000 + v) > values.index(v) for v in range(20))


async def test_an_ordered_slow_input_does_hold_back_the_merge() -> None:
    # The same graph with the slow input merged by media time: the baseline of the above.
    pipe, sink = _beside_a_slow_stage(5, ordered=True)
    began = asyncio.get_running_loop().time()
    await pipe.run()
    assert max(t for v, t in sink.seen if v < 1000) - began > 0.6


class BadClose(Record):
    """A sink whose output cannot be closed (a full disk under a buffered file)."""

    async def stop(self) -> None:
        await super().stop()
        raise OSError(28, "No space left on device")


async def test_a_failed_stop_is_reported_after_everything_else_stopped(caplog) -> None:
    source, bad, good = Numbers("src", [0.0, 1.0]), BadClose("bad"), Record("good")
    pipe = _fan_out(source, bad, good)
    with pytest.raises(PipelineError, match=r"stage 'bad' failed while stopping: .*No space"):
        await pipe.run()
    assert len(bad.seen) == len(good.seen) == 2
    assert good.stopped and source.closed, "one failure does not keep the others open"
    assert "stage 'bad' failed while stopping" in caplog.text


async def test_a_failed_stop_after_a_failure_is_logged_not_raised(caplog) -> None:
    pipe = _fan_out(Numbers("src", [0.0, 1.0, 2.0]), BadClose("bad"),
                    Record("failing", fail_at=1.0))
    with pytest.raises(PipelineError, match=r"stage 'failing' failed at media time 1\.000s"):
        await pipe.run()
    assert "stage 'bad' failed while stopping" in caplog.text


def test_stage_latencies_keep_a_bounded_uniform_sample() -> None:
    """A day-long live session calls a stage millions of times; its metrics keep KEPT of
    them, each call as likely as any other, so the percentiles stay those of the run."""
    from stream.metrics import KEPT, StageMetrics

    metrics = StageMetrics("s")
    calls = 25 * KEPT
    for i in range(calls):
        metrics.record(i / calls)
    assert metrics.calls == calls and len(metrics.latencies) == KEPT
    # The median of a uniform sample of 4096 lies within 0.025 of the true one with
    # probability above 0.998 (normal approximation: sd 0.5 / sqrt(4096) = 0.0078).
    assert abs(metrics.percentile_ms(50) / 1e3 - 0.5) < 0.025
    assert abs(metrics.percentile_ms(95) / 1e3 - 0.95) < 0.025


class HoldToEnd(Stage):
    """Takes every item and emits one at the end, at the time its progress already reached
    (the turn a media's end closes, at the end of the media)."""

    name = "hold"

    def __init__(self) -> None:
        self.last = float("-inf")

    async def process(self, item: Item) -> Sequence[Item]:
        self.last = item.pts
        return ()

    async def finish(self) -> Sequence[Item]:
        return [Num(pts=self.last, value=7)]


class Answer(Stage):
    """Answers each item at once, at its time (a prediction of a turn)."""

    name = "answer"

    async def process(self, item: Item) -> Sequence[Item]:
        assert isinstance(item, Num)
        return [Num(pts=item.pts, value=1000 + item.value)]


async def test_an_unordered_answer_follows_its_item_emitted_at_the_progress_already_made(
) -> None:
    """The answer has its item's time, which the merge had already reached through the
    holding stage's watermark: a tie, which the merged item wins (before: the answer was
    taken first, a prediction before its turn at the end of a clip)."""
    pipe = Pipeline()
    pipe.add(Numbers("src", [0.0, 1.0]))
    pipe.add(HoldToEnd())
    pipe.add(Answer())
    sink = Arrivals()
    pipe.add(sink)
    pipe.connect("src", "hold", Num)
    pipe.connect("hold", "answer", Num)
    pipe.connect("hold", "arrivals", Num)
    pipe.connect("answer", "arrivals", Num, ordered=False)
    await pipe.run()
    assert [v for v, _ in sink.seen] == [7, 1007]
