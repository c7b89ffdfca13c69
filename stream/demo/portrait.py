"""Players made from a real photograph, with a jaw that drops and a head that turns.

The photograph is `skimage.data.astronaut()` (NASA, public domain), shipped in
the scikit-image wheel. Appearance variants recolour the suit and mirror the
picture so the players can be told apart; the face stays a real face, so a
real face detector finds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from skimage import data

CROP = (slice(0, 300), slice(100, 350))
"""Head and shoulders inside the 512x512 photograph."""
WIDTH, HEIGHT = 250, 300
MOUTH = (122.0, 146.0)
NOSE = (125.0, 127.0)
JAW_DROP_PX = 9.0
"""How far the jaw drops at full voice, in portrait pixels."""
LIPS_PART_PX = 4.0
"""How far each lip moves from the mouth line at full voice (`lips` style)."""
LIPS_STRETCH = 0.12
"""Sideways stretch of the mouth corners at full voice, as a share of their offset."""
YAW_SHIFT_PX = 10.0
"""How far the central face moves sideways at full yaw, in portrait pixels."""
SUIT_HUES = {1: 105, 2: 60}
"""Hue (OpenCV's 0..180 scale) the orange suit takes in each variant."""


@dataclass(frozen=True)
class Portrait:
    """An RGB head-and-shoulders picture with its alpha mask and face landmarks."""

    image: np.ndarray
    alpha: np.ndarray
    mouth: tuple[float, float]
    nose: tuple[float, float]


@cache
def portrait(look: int) -> Portrait:
    """Appearance variant `look` (0, 1, 2, ... cycle through recolour and mirror)."""
    image = np.ascontiguousarray(data.astronaut()[CROP])
    suit_hue = SUIT_HUES.get(look % 3)
    if suit_hue is not None:
        image = _recolour_suit(image, suit_hue)
    alpha = _person_mask(image)
    mouth, nose = MOUTH, NOSE
    if look % 2 == 1:
        image, alpha = image[:, ::-1].copy(), alpha[:, ::-1].copy()
        mouth = (WIDTH - 1 - mouth[0], mouth[1])
        nose = (WIDTH - 1 - nose[0], nose[1])
    image.setflags(write=False)
    alpha.setflags(write=False)
    return Portrait(image, alpha, mouth, nose)


def _recolour_suit(image: np.ndarray, new_hue: int) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hue, saturation = hsv[..., 0], hsv[..., 1]
    suit = ((hue <= 22) | (hue >= 172)) & (saturation > 90) & (np.arange(HEIGHT)[:, None] > 200)
    hsv[..., 0] = np.where(suit, new_hue, hue)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _person_mask(image: np.ndarray) -> np.ndarray:
    """Cut the person from the studio backdrop with GrabCut, seeded by head and body shapes."""
    seed = np.full((HEIGHT, WIDTH), cv2.GC_BGD, np.uint8)
    cv2.ellipse(seed, (127, 95), (85, 100), 0, 0, 360, cv2.GC_PR_FGD, -1)
    cv2.ellipse(seed, (125, 340), (150, 195), 0, 0, 360, cv2.GC_PR_FGD, -1)
    cv2.ellipse(seed, (125, 120), (40, 60), 0, 0, 360, cv2.GC_FGD, -1)
    cv2.rectangle(seed, (40, 230), (210, 299), cv2.GC_FGD, -1)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), seed, None, bgd, fgd, 5,
                cv2.GC_INIT_WITH_MASK)
    person = np.isin(seed, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8) * 255
    return cv2.GaussianBlur(person, (5, 5), 0).astype(np.float32) / 255.0


def animate(p: Portrait, mouth_open: float, yaw: float, style: str = "jaw",
            nod: float = 0.0) -> np.ndarray:
    """The portrait with its mouth opened by `mouth_open` (0..1), turned by `yaw` (-1..1)
    and nodded down by `nod` portrait pixels.

    `jaw`: the jaw drops. `lips`: only the lips move, parting vertically and stretching
    sideways around the mouth, with no jaw motion. Positive yaw turns the face towards
    the right of the picture.
    """
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    mx, my = p.mouth
    nx, ny = p.nose
    turn = yaw * YAW_SHIFT_PX * np.exp(-((xs - nx) / 30.0) ** 2 - ((ys - ny) / 45.0) ** 2)
    head = nod * np.clip((240.0 - ys) / 60.0, 0.0, 1.0)
    if style == "lips":
        near = np.exp(-((xs - mx) / 16.0) ** 2 - ((ys - my) / 7.0) ** 2)
        part = mouth_open * LIPS_PART_PX * np.tanh((ys - my) / 3.0) * near
        stretch = mouth_open * LIPS_STRETCH * (xs - mx) * near
        warped = cv2.remap(p.image, xs - turn - stretch, ys - part - head, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
        if mouth_open * LIPS_PART_PX >= 1.0:
            _paint_mouth(warped, (mx + yaw * YAW_SHIFT_PX * 0.7, my - 1 + head_at(nod, my)),
                         mouth_open * LIPS_PART_PX * 1.2, width=7)
        return warped
    drop = mouth_open * JAW_DROP_PX
    below = np.clip((my + 54.0 - ys) / 22.0, 0.0, 1.0) * (ys >= my)
    jaw = drop * np.exp(-((xs - mx) / 28.0) ** 2) * below
    warped = cv2.remap(p.image, xs - turn, ys - jaw - head, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT)
    if drop >= 1.0:
        _paint_mouth(warped, (mx + yaw * YAW_SHIFT_PX * 0.7, my + head_at(nod, my)), drop)
    return warped


def head_at(nod: float, y: float) -> float:
    """How far a nod moved the picture at row `y`."""
    return nod * float(np.clip((240.0 - y) / 60.0, 0.0, 1.0))


def _paint_mouth(image: np.ndarray, centre: tuple[float, float], drop: float,
                 width: int = 9) -> None:
    overlay = image.copy()
    cx, cy = centre
    axes = (round(width + drop * 0.5), max(1, round(drop / 2)))
    cv2.ellipse(overlay, (round(cx), round(cy + drop / 2)), axes, 0, 0, 360,
                (70, 22, 28), -1, lineType=cv2.LINE_AA)
    cv2.addWeighted(overlay, 0.85, image, 0.15, 0, dst=image)


def back_of_head(p: Portrait, image: np.ndarray) -> np.ndarray:
    """The same person turned away: hair where the face was."""
    hair = p.image[22:52, 95:155]
    tiled = np.tile(hair, (HEIGHT // hair.shape[0] + 1, WIDTH // hair.shape[1] + 1, 1))
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    cv2.ellipse(mask, (round(p.nose[0]), 112), (60, 82), 0, 0, 360, 255, -1)
    soft = cv2.GaussianBlur(mask, (15, 15), 0).astype(np.float32)[..., None] / 255.0
    return (soft * tiled[:HEIGHT, :WIDTH] + (1 - soft) * image).astype(np.uint8)
