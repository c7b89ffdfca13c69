"""What a pipeline is built of: stages (typed items in, typed items out) and sources."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence

from stream.frames import Item


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
