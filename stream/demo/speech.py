"""Speech for the demo: espeak-ng voices, trimmed to their voiced extent."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np
from scipy.signal import resample_poly

from stream.errors import UserError
from stream.frames import SAMPLE_RATE

TRIM_LEVEL = 0.02
"""Fraction of the peak below which leading/trailing audio counts as silence."""


def synthesize(text: str, voice: str, words_per_minute: int = 165) -> np.ndarray:
    """Speak `text` with espeak-ng; float32 mono at `SAMPLE_RATE`, silence trimmed."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("espeak-ng is not installed; the demo generator needs it "
                        "(apt-get install espeak-ng)")
    result = subprocess.run([exe, "-v", voice, "-s", str(words_per_minute), "--stdout", text],
                            capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise UserError(f"espeak-ng failed for voice {voice!r}: "
                        f"{result.stderr.decode(errors='replace').strip()}")
    with wave.open(io.BytesIO(result.stdout)) as wav:
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    divisor = np.gcd(SAMPLE_RATE, rate)
    audio = resample_poly(audio, SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)
    return trim(audio)


def trim(audio: np.ndarray) -> np.ndarray:
    """Cut to the first and last sample above `TRIM_LEVEL` of the peak."""
    loud = np.flatnonzero(np.abs(audio) > TRIM_LEVEL * float(np.abs(audio).max()))
    if loud.size == 0:
        return audio[:0]
    return audio[loud[0]: loud[-1] + 1]


def envelope(audio: np.ndarray, times: np.ndarray, window: float = 0.04) -> np.ndarray:
    """RMS of `audio` in a window around each of `times` (seconds), scaled to 0..1."""
    half = int(window * SAMPLE_RATE / 2)
    centres = np.round(times * SAMPLE_RATE).astype(int)
    squares = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    lo = np.clip(centres - half, 0, len(audio))
    hi = np.clip(centres + half, 0, len(audio))
    rms = np.sqrt((squares[hi] - squares[lo]) / np.maximum(hi - lo, 1))
    reference = np.percentile(rms[rms > 0], 90) if np.any(rms > 0) else 1.0
    return np.clip(rms / reference, 0.0, 1.0)
