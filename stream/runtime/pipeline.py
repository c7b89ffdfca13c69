"""The lifecycle of a pipeline: start its stages, run every node as a task until the graph
has drained, stop and close everything whatever failed, and the signals that drain it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

from rich.table import Table

from stream.frames import Item
from stream.metrics import StageMetrics, metrics_table
from stream.runtime.edge import Edge, Policy
from stream.runtime.graph import Graph, Node
from stream.runtime.nodes import NodeRunner, Observer
from stream.runtime.stage import PipelineError, Source, Stage

log = logging.getLogger(__name__)

CANCEL_TIMEOUT = 5.0


class Pipeline:
    """Owns the graph and its lifecycle: start, run until drained, stop."""

    def __init__(self) -> None:
        self._graph = Graph()
        self._observers: list[Observer] = []
        self._runner = NodeRunner(self._observers, lambda: self.stop_requested)
        self._stop_requested = asyncio.Event()
        self._shutting_down = False
        self.stopped_by: int | None = None
        """The signal that asked the run to stop, if one did."""

    # -- building -------------------------------------------------------
    def add(self, runnable: Stage | Source, name: str | None = None) -> str:
        return self._graph.add(runnable, name)

    def connect(self, src: str, dst: str, *types: type[Item], policy: Policy = "block",
                maxsize: int = 64, ordered: bool = True) -> Edge:
        """Route items of `types` from `src` to `dst`; control items always follow.

        `ordered=False` keeps this input out of the media-time merge (see the module doc):
        for a stage whose outputs do not depend on the order of this input's items relative
        to the others, such as a sink.
        """
        return self._graph.connect(src, dst, *types, policy=policy, maxsize=maxsize,
                                   ordered=ordered)

    @property
    def stages(self) -> list[Stage]:
        return [node.runnable for node in self._graph.stage_nodes]  # type: ignore[misc]

    @property
    def edges(self) -> list[Edge]:
        return self._graph.edges

    def observe(self, observer: Observer) -> None:
        self._observers.append(observer)

    # -- control --------------------------------------------------------
    def request_stop(self) -> None:
        """Stop reading sources; what is in flight drains and sinks flush."""
        self._stop_requested.set()
        for node in self._graph.source_nodes:
            node.winding_down = node.runnable.stop()  # type: ignore[assignment]

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
        self._graph.check()
        stages = self._graph.stage_nodes
        started: list[Node] = []
        failed = False
        try:
            for node in reversed(stages):  # sinks were added last: they start first
                node.current_pts = None
                await self._runner.guard(node, node.runnable.start())
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

    async def _shut_down(self, started: list[Node]) -> list[PipelineError]:
        """Stop every started stage and close every source, whatever fails on the way; each
        failure is logged (the first one is raised by `run` when nothing else failed)."""
        self._shutting_down = True
        closing = [(node, node.runnable.stop) for node in started] + [
            (node, node.runnable.close) for node in self._graph.source_nodes]
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
            asyncio.create_task(self._runner.run(node), name=node.name): node
            for node in self._graph.nodes.values()
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

    async def _cancel(self, tasks: dict[asyncio.Task[None], Node]) -> None:
        live = [t for t in tasks if not t.done()]
        for task in live:
            task.cancel()
        if not live:
            return
        _, still = await asyncio.wait(live, timeout=CANCEL_TIMEOUT)
        for task in still:
            log.warning("stage %s did not stop within %.0fs of cancel", task.get_name(),
                        CANCEL_TIMEOUT)

    # -- reporting ------------------------------------------------------
    def stage_metrics(self) -> dict[str, StageMetrics]:
        return self._graph.stage_metrics()

    def metrics(self) -> dict[str, dict[str, float | int | None]]:
        return {name: m.as_dict() for name, m in self.stage_metrics().items()}

    def metrics_table(self) -> Table:
        return metrics_table(self.stage_metrics())
