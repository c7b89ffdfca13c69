"""The bounded queue between two nodes, with its drop policy."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Literal

from stream.frames import ControlItem, DataItem, Item

Policy = Literal["block", "latest"]


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
