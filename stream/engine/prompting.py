"""Visual prompting: each player's box and id drawn on the frame, as Online-MMSI does."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stream.frames import PlayerView

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]


def draw_players(image: np.ndarray, views: Sequence[PlayerView]) -> Image.Image:
    picture = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 160))
    font = ImageFont.load_default(size=max(10, round(min(picture.size) / 20)))
    for view in views:
        colour = COLOURS[_number(view.player) % len(COLOURS)]
        x0, y0, x1, y1 = view.box
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        draw.text((x0 + width, y0 + width), view.player, fill=colour, font=font)
    return picture


def _number(player: str) -> int:
    digits = "".join(ch for ch in player if ch in "0123456789")  # not "²": int() refuses it
    return int(digits) - 1 if digits else sum(map(ord, player))
