"""Small media files made in code for tests (PyAV, no external tools)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

RATE = 16_000


def tone_track(spans: list[tuple[float, float]], duration: float, seed: int = 0) -> np.ndarray:
    """Voice-like bursts (harmonic tone with vibrato) in `spans`, faint noise elsewhere."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration * RATE)) / RATE
    track = rng.normal(0, 0.002, t.size).astype(np.float32)
    for start, end in spans:
        inside = (t >= start) & (t < end)
        tt = t[inside]
        f0 = 140 + 20 * np.sin(2 * np.pi * 3 * tt)
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        voice = sum(np.sin(k * phase) / k for k in range(1, 8))
        track[inside] += 0.25 * voice * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * tt) ** 2)
    return np.clip(track, -1, 1)


def write_media(path: Path, *, duration: float = 3.0, audio: np.ndarray | None = None,
                video: bool = True, fps: int = 25, size: tuple[int, int] = (160, 120)) -> Path:
    """An MP4 (H.264 + AAC) or, without video, an M4A; either stream may be left out."""
    with av.open(str(path), "w") as container:
        vstream = astream = None
        if video:
            vstream = container.add_stream("libx264", rate=fps)
            vstream.width, vstream.height, vstream.pix_fmt = size[0], size[1], "yuv420p"
        if audio is not None:
            astream = container.add_stream("aac", rate=RATE, layout="mono")
        if vstream is not None:
            for n in range(int(duration * fps)):
                image = np.full((size[1], size[0], 3), (n * 7) % 255, np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts, frame.time_base = n, Fraction(1, fps)
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if astream is not None:
            for at in range(0, len(audio), 1024):
                chunk = np.ascontiguousarray(audio[at: at + 1024][None, :].astype(np.float32))
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = RATE, at
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return path
