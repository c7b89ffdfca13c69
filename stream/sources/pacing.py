"""Pacing of a replay: as fast as possible, or like live at a given speed.

Stages never read a clock; only sources wait, and only here. Events do not
depend on pacing because stages merge their inputs by media time.
"""

from __future__ import annotations

import asyncio
import time


class Pacer:
    """Holds items back until the wall clock catches up with their media time."""

    def __init__(self, speed: float | None = None) -> None:
        if speed is not None and speed <= 0:
            raise ValueError(f"pacing speed must be > 0, got {speed}")
        self.speed = speed
        self._origin: tuple[float, float] | None = None

    async def wait_until(self, pts: float) -> None:
        if self.speed is None:
            return
        now = time.monotonic()
        if self._origin is None:
            self._origin = (now, pts)
            return
        wall0, pts0 = self._origin
        delay = wall0 + (pts - pts0) / self.speed - now
        if delay > 0:
            await asyncio.sleep(delay)

    def wall_time(self, pts: float) -> float | None:
        """`time.monotonic()` at which media time `pts` is due (None before the first item)."""
        if self.speed is None or self._origin is None:
            return None
        wall0, pts0 = self._origin
        return wall0 + (pts - pts0) / self.speed
