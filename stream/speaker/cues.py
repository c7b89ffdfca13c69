"""Mouth motion per face, with head motion taken out.

For each tracked face, the mouth region and the upper face (eyes, brow) are
cut out relative to the face box, scaled to fixed sizes and compared with the
same track's previous frame as row profiles (each row's mean): a head that
turns slides the face sideways, which row means do not see, while a jaw that
drops moves rows. A nod or box jitter moves every row together, so profiles
are compared at the best of a few vertical shifts. Speech deforms the mouth
but not the brow; what the brow still shows is taken off the mouth's change,
never below zero.
"""

from __future__ import annotations

import cv2
import numpy as np

from stream.frames import Box

MOUTH_PATCH = (32, 18)
UPPER_PATCH = (32, 12)
SHIFT = 4
"""Largest sideways/vertical shift (patch pixels) tried when comparing with the last frame."""


def _patch(gray: np.ndarray, centre: tuple[float, float], width: float, height: float,
           size: tuple[int, int]) -> np.ndarray | None:
    """A region scaled to `size` plus a margin of `SHIFT` patch pixels on every side."""
    width *= (size[0] + 2 * SHIFT) / size[0]
    height *= (size[1] + 2 * SHIFT) / size[1]
    size = (size[0] + 2 * SHIFT, size[1] + 2 * SHIFT)
    x0, y0 = round(centre[0] - width / 2), round(centre[1] - height / 2)
    x1, y1 = round(centre[0] + width / 2), round(centre[1] + height / 2)
    h, w = gray.shape
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    return cv2.resize(gray[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA).astype(np.float32)


class MouthMotion:
    """Keeps the previous patches of each track; `measure` returns the motion since then."""

    def __init__(self) -> None:
        self._previous: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._mouth_offset: dict[int, tuple[float, float]] = {}

    def measure(self, track: int, gray: np.ndarray, box: Box,
                mouth: tuple[float, float] | None) -> float:
        """Mouth motion (0..1 grey levels per pixel); 0 on a track's first frame."""
        w, h = box[2] - box[0], box[3] - box[1]
        if mouth is not None:  # remember where the mouth sits in the box for coasting frames
            self._mouth_offset[track] = ((mouth[0] - box[0]) / w, (mouth[1] - box[1]) / h)
        rel = self._mouth_offset.get(track, (0.5, 0.78))
        mouth_centre = (box[0] + rel[0] * w, box[1] + (rel[1] + 0.06) * h)
        mouth_patch = _patch(gray, mouth_centre, 0.55 * w, 0.32 * h, MOUTH_PATCH)
        upper_patch = _patch(gray, (box[0] + 0.5 * w, box[1] + 0.36 * h), 0.6 * w, 0.22 * h,
                             UPPER_PATCH)
        if mouth_patch is None or upper_patch is None:
            self._previous.pop(track, None)
            return 0.0
        previous = self._previous.get(track)
        self._previous[track] = (mouth_patch, upper_patch)
        if previous is None:
            return 0.0
        return max(0.0, _change(mouth_patch, previous[0]) - _change(upper_patch, previous[1]))

    def forget(self, live: set[int]) -> None:
        for track in [t for t in self._previous if t not in live]:
            del self._previous[track]
        for track in [t for t in self._mouth_offset if t not in live]:
            del self._mouth_offset[track]


def _change(now: np.ndarray, before: np.ndarray) -> float:
    """Change of the patch's row profile, at the vertical shift that explains most of it.

    Averaging each row keeps what moves up and down (a jaw, lips) and drops
    what slides sideways (a head turning, which is horizontal in the picture).
    """
    rows_now, rows_before = now.mean(axis=1), before.mean(axis=1)
    h = len(rows_now) - 2 * SHIFT
    centre = rows_now[SHIFT:SHIFT + h]
    best = min(float(np.abs(centre - rows_before[dy:dy + h]).mean())
               for dy in range(2 * SHIFT + 1))
    return best / 255.0
