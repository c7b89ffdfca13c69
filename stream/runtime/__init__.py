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
as the merge has gone past the item's time (or every merged input has ended).
A sink that takes the engine's predictions beside turns and per-frame speakers
does so: a slow model delays only the predictions, and a prediction still
follows its turn.

Read it in parts: `stage.py` (what a pipeline is built of), `edge.py` (the queues),
`graph.py` (nodes and edges), `merge.py` (the order a stage sees its inputs in),
`nodes.py` (running one node) and `pipeline.py` (the lifecycle: start, run, drain, stop).
"""

from stream.runtime.edge import Edge, Policy
from stream.runtime.graph import Graph
from stream.runtime.merge import InputMerge
from stream.runtime.nodes import WATERMARK_STEP, Observer
from stream.runtime.pipeline import Pipeline
from stream.runtime.stage import PipelineError, Source, Stage

__all__ = ["WATERMARK_STEP", "Edge", "Graph", "InputMerge", "Observer", "Pipeline",
           "PipelineError", "Policy", "Source", "Stage"]
