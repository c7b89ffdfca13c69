"""The graph of a pipeline: named nodes (sources and stages) and the edges between them,
with what each node has done so far. It only holds; `Pipeline` runs it."""

from __future__ import annotations

from dataclasses import dataclass, field

from stream.frames import DataItem, Item
from stream.metrics import StageMetrics
from stream.runtime.edge import Edge, Policy
from stream.runtime.stage import Source, Stage


@dataclass
class Node:
    name: str
    runnable: Stage | Source
    inputs: list[Edge] = field(default_factory=list)
    outputs: list[Edge] = field(default_factory=list)
    metrics: StageMetrics = field(init=False)
    current_pts: float | None = None
    """The media time the node is working on (named in its errors)."""
    frontier: float = float("-inf")
    """How far its outputs have come: nothing it emits may be earlier."""
    winding_down: bool = False
    """A source asked to stop that still hands over what it already read."""

    def __post_init__(self) -> None:
        self.metrics = StageMetrics(self.name)


class Graph:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}

    def add(self, runnable: Stage | Source, name: str | None = None) -> str:
        name = name or runnable.name
        if name in self.nodes:
            raise ValueError(f"a node named {name!r} is already in the pipeline")
        self.nodes[name] = Node(name, runnable)
        return name

    def connect(self, src: str, dst: str, *types: type[Item], policy: Policy = "block",
                maxsize: int = 64, ordered: bool = True) -> Edge:
        if isinstance(self.nodes[dst].runnable, Source):
            raise ValueError(f"{dst!r} is a source and takes no input")
        edge = Edge(src, dst, types or (DataItem,), policy, maxsize, ordered)
        self.nodes[src].outputs.append(edge)
        self.nodes[dst].inputs.append(edge)
        return edge

    @property
    def stage_nodes(self) -> list[Node]:
        """In the order they were added: sources first, sinks last."""
        return [n for n in self.nodes.values() if isinstance(n.runnable, Stage)]

    @property
    def source_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if isinstance(n.runnable, Source)]

    @property
    def edges(self) -> list[Edge]:
        return [edge for node in self.nodes.values() for edge in node.outputs]

    def check(self) -> None:
        for node in self.stage_nodes:
            if not node.inputs:
                raise ValueError(f"stage {node.name!r} has no input edge")

    def stage_metrics(self) -> dict[str, StageMetrics]:
        for node in self.nodes.values():
            node.metrics.dropped = sum(e.dropped for e in node.inputs)
            node.metrics.max_queue_depth = max((e.max_depth for e in node.inputs), default=0)
        return {name: node.metrics for name, node in self.nodes.items()}
