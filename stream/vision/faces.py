"""Face detection with the MediaPipe Tasks API and BlazeFace models shipped in this package.

Current mediapipe wheels bundle no models, so `models/` carries the two
BlazeFace detectors from the mediapipe 0.10.21 wheel (Apache-2.0, notice
beside them). Each detection has a box and six keypoints; the keypoints give
the mouth position and a head-yaw estimate.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stream.errors import UserError
from stream.frames import Box

MODELS = {
    "short_range": "face_detection_short_range.tflite",
    "full_range": "face_detection_full_range_sparse.tflite",
}
RIGHT_EYE, LEFT_EYE, NOSE, MOUTH, RIGHT_EAR, LEFT_EAR = range(6)
"""Keypoint order of BlazeFace (the person's right eye appears on the picture's left)."""


class FaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["short_range", "full_range"] = Field(
        "full_range",
        description="full_range: faces up to ~5 m, small in the picture; short_range: within ~2 m")
    min_confidence: float = Field(0.4, gt=0, lt=1, description="detection score threshold")
    detect_width: int | None = Field(
        None, ge=64, description="downscale frames to this width before detection (null: as is)")
    detect_every: int = Field(
        2, ge=1, description="detect on every n-th frame; tracks carry boxes in between")


@dataclass(frozen=True)
class Face:
    box: Box
    score: float
    keypoints: tuple[tuple[float, float], ...]
    """Six (x, y) pixel positions in BlazeFace order."""

    @property
    def mouth(self) -> tuple[float, float]:
        return self.keypoints[MOUTH]

    @property
    def yaw(self) -> float:
        """-1..1 from where the nose sits between the ears; positive faces the picture's right."""
        nose_x = self.keypoints[NOSE][0]
        ears = sorted((self.keypoints[RIGHT_EAR][0], self.keypoints[LEFT_EAR][0]))
        left, right = nose_x - ears[0], ears[1] - nose_x
        total = left + right
        return float(np.clip((left - right) / total, -1.0, 1.0)) if total > 1e-6 else 0.0


@contextlib.contextmanager
def _quiet_native_logs() -> Iterator[None]:
    """MediaPipe's native runtime logs to fd 2 on start-up; keep it unless something fails."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            log.seek(0)
            os.write(2, log.read()[-4000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class FaceDetector:
    """A MediaPipe face detector in image mode; close it (or use `with`) when done."""

    def __init__(self, config: FaceConfig | None = None) -> None:
        self.config = config or FaceConfig()
        with _quiet_native_logs():
            from mediapipe.tasks.python import BaseOptions, vision

            model = resources.files("stream.vision.models").joinpath(MODELS[self.config.model])
            try:
                options = vision.FaceDetectorOptions(
                    base_options=BaseOptions(model_asset_buffer=model.read_bytes()),
                    running_mode=vision.RunningMode.IMAGE,
                    min_detection_confidence=self.config.min_confidence)
                self._detector = vision.FaceDetector.create_from_options(options)
            except (OSError, RuntimeError, ValueError) as exc:
                raise UserError(f"face detector model {MODELS[self.config.model]}: cannot load "
                                f"({exc}); reinstall socialstream") from exc
        self._warm = False

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, in its pixel coordinates."""
        import mediapipe as mp

        height, width = image.shape[:2]
        scale = 1.0
        target = self.config.detect_width
        if target is not None and width > target:
            scale = width / target
            image = cv2.resize(image, (target, round(height / scale)),
                               interpolation=cv2.INTER_AREA)
        picture = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        if self._warm:
            result = self._detector.detect(picture)
        else:
            with _quiet_native_logs():
                result = self._detector.detect(picture)
            self._warm = True
        h, w = image.shape[:2]
        faces = []
        for det in result.detections:
            bb = det.bounding_box
            box = (bb.origin_x * scale, bb.origin_y * scale, (bb.origin_x + bb.width) * scale,
                   (bb.origin_y + bb.height) * scale)
            points = tuple((k.x * w * scale, k.y * h * scale) for k in det.keypoints)
            faces.append(Face(box, float(det.categories[0].score), points))
        return faces

    def close(self) -> None:
        with _quiet_native_logs():
            self._detector.close()

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
