"""Streaming Light-ASD: per face track, a speaking probability for every 25 fps tick.

The model was trained on 25 fps face crops and 100 fps MFCCs, so video is sampled
on the media clock at 25 ticks a second (the first frame at or after each tick)
and every tick's crop comes from the track's box the way the released demo cut
its faces. Everything here uses the past only:

* Visual embeddings stream layer by layer. Each encoder block's temporal
  convolutions (kernels 3 and 5) need two frames after the one they describe, so
  a block keeps its last four activations per track and emits a frame two ticks
  late; zero activations before a track's first frame are exactly the
  convolution's own zero padding, so what comes out equals running the encoder
  over the whole track. Three blocks: a tick's embedding is final six ticks
  (240 ms) later, computed once.
* Audio embeddings are shared by all tracks, computed once per tick from the
  MFCCs around it (their receptive field is about 170 ms each way).
* A tick's score is the last output of the bidirectional GRU over the window of
  `window_s` that ends at that tick, all tracks of a tick in one batch.

Ticks are computed `batch` at a time (default 2), so a decision about tick t is made
when tick t+6 or t+7 arrives: 240 to 280 ms of media plus the compute
(`socialstream bench perception` measures it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch
from python_speech_features import mfcc
from torch.nn import functional as F

from stream.frames import SAMPLE_RATE, Box
from stream.speaker.light_asd import PIXEL_MEAN, PIXEL_STD, LightASD, VisualBlock, load_light_asd

FPS = 25
MFCC_PER_TICK = 4
HOP = SAMPLE_RATE // (FPS * MFCC_PER_TICK)
"""Samples between MFCC frames (10 ms)."""
WIN = SAMPLE_RATE * 25 // 1000
"""Samples per MFCC frame (25 ms)."""
CROP = 112
BLOCK_DELAY = 2
DELAY = 3 * BLOCK_DELAY
"""Ticks between a crop and its final visual embedding."""
AUDIO_CONTEXT = 4
"""Ticks of MFCCs on each side of the one an audio embedding is taken for: about the
audio encoder's reach (17 MFCC frames), and all known by the time the tick is final."""
WEIGHTS = {"talkset": "light_asd_talkset.pt", "ava": "light_asd_ava.pt"}


def weights_path(name: str) -> Path:
    """A shipped checkpoint by name (`talkset`, `ava`) or a file of the same format."""
    if name in WEIGHTS:
        return Path(str(resources.files("stream.speaker.models") / WEIGHTS[name]))
    return Path(name)


def face_crop(gray: np.ndarray, box: Box) -> np.ndarray:
    """The 112x112 grey crop Light-ASD's demo fed its model: a square of 2.8 half-sides
    around the face resized to 224, of which the centre 112 (mouth, nose, cheeks)."""
    x0, y0, x1, y1 = box
    half = max(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top, side = cx - 0.7 * half, cy - 0.3 * half, 1.4 * half
    scale = CROP / side
    warp = np.float32([[scale, 0, -left * scale], [0, scale, -top * scale]])
    return cv2.warpAffine(gray, warp, (CROP, CROP), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=110)


LONGEST_GAP = 2 * SAMPLE_RATE
"""Samples of a gap filled with silence; past it, the MFCC stream restarts (a stall of an
hour padded with zeros took 6 GB and 30 s)."""


class StreamingMfcc:
    """13 MFCCs every 10 ms as `python_speech_features.mfcc(audio, 16000)` computes them
    over the whole recording, frame k covering samples [160k, 160k + 400), fed in
    chunks: pre-emphasis carries its last sample across chunks."""

    def __init__(self, start: int = 0) -> None:
        """`start`: the sample index it begins at (a scorer made mid-session starts at the
        present, not with the session's silence computed first)."""
        self._begin(start)

    def _begin(self, start: int) -> None:
        self._samples = start // HOP * HOP
        self.frames: list[np.ndarray] = []
        self.first = self._samples // HOP
        """MFCC frame index of `frames[0]` (old frames are dropped)."""
        self._pending = np.zeros(0, np.float64)
        self._last = 0.0
        self._begun = False

    @property
    def count(self) -> int:
        return self.first + len(self.frames)

    def push(self, samples: np.ndarray, at: int) -> None:
        """Int16 samples starting at absolute sample index `at` (gaps are silence; one
        longer than `LONGEST_GAP` starts the stream again at `at`, instead of computing
        the silence of an outage)."""
        if at - self._samples > LONGEST_GAP:
            self._begin(at)
        if at > self._samples:
            samples = np.concatenate([np.zeros(at - self._samples, samples.dtype), samples])
        elif at < self._samples:
            samples = samples[self._samples - at:]
        x = samples.astype(np.float64)
        if not len(x):
            return
        emphasised = np.empty_like(x)
        emphasised[0] = x[0] - 0.97 * self._last
        emphasised[1:] = x[1:] - 0.97 * x[:-1]
        if not self._begun:
            emphasised[0] = x[0]
            self._begun = True
        self._last = x[-1]
        self._samples += len(x)
        self._pending = np.concatenate([self._pending, emphasised])
        ready = (len(self._pending) - WIN) // HOP + 1
        if ready <= 0:
            return
        usable = self._pending[:(ready - 1) * HOP + WIN]
        features = mfcc(usable, SAMPLE_RATE, numcep=13, winlen=WIN / SAMPLE_RATE,
                        winstep=HOP / SAMPLE_RATE, preemph=0.0)
        self.frames.extend(features[:ready].astype(np.float32))
        self._pending = self._pending[ready * HOP:]

    def window(self, begin: int, end: int) -> np.ndarray:
        """Frames [begin, end), zeros where not (yet, or no longer) known."""
        out = np.zeros((end - begin, 13), np.float32)
        lo, hi = max(begin, self.first), min(end, self.count)
        if hi > lo:
            out[lo - begin:hi - begin] = np.stack(self.frames[lo - self.first:hi - self.first])
        return out

    def forget_before(self, frame: int) -> None:
        drop = min(max(0, frame - self.first), len(self.frames))
        del self.frames[:drop]
        self.first += drop


def _fold(conv: torch.nn.Module, norm: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution followed by inference-time batch norm, as one weight and bias."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    weight = conv.weight * scale.reshape(-1, *[1] * (conv.weight.dim() - 1))
    return weight.detach(), (norm.bias - norm.running_mean * scale).detach()


@dataclass(frozen=True)
class _Folded:
    """A visual block's weights with batch norm folded in, shaped for streaming: spatial
    (1,k,k) convolutions as 2-D ones, temporal (k,1,1) and pointwise ones as matrices."""

    stride: int
    spatial: dict[int, tuple[torch.Tensor, torch.Tensor]]
    temporal: dict[int, tuple[torch.Tensor, torch.Tensor]]
    last: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def of(cls, block: VisualBlock) -> _Folded:
        spatial, temporal = {}, {}
        for k in (3, 5):
            w, b = _fold(getattr(block, f"s_{k}"), getattr(block, f"bn_s_{k}"))
            spatial[k] = (w[:, :, 0].contiguous(), b)
            w, b = _fold(getattr(block, f"t_{k}"), getattr(block, f"bn_t_{k}"))
            # (out, in, k) -> (out, k, in): taps are read time-major.
            temporal[k] = (w[:, :, :, 0, 0].transpose(1, 2).flatten(1).contiguous(), b)
        w, b = _fold(block.last, block.bn_last)
        return cls(block.s_3.stride[1], spatial, temporal, (w.flatten(1).contiguous(), b))


@dataclass
class _Track:
    first: int
    """The tick of the track's first crop."""
    caches: list[dict[int, torch.Tensor]] = field(default_factory=lambda: [{}, {}, {}])
    """Per encoder block and branch: its last four activations (4, C, H*W)."""
    fed: list[int] = field(default_factory=lambda: [0, 0, 0])
    """Frames fed to each block so far."""
    crops: list[np.ndarray] = field(default_factory=list)
    """Crops waiting for the next batch of ticks."""
    embeddings: deque[tuple[int, torch.Tensor]] = field(default_factory=deque)


class LightAsdScorer:
    """Feed audio and each tick's crops; get the ticks whose scores became final.

    Ticks are computed `batch` at a time (one call per block for all of them: fewer,
    larger matrix products), which adds `batch - 1` ticks to the decision delay."""

    def __init__(self, model: LightASD, window_s: float = 0.5, batch: int = 2,
                 bfloat16: bool = False, audio_start: int = 0) -> None:
        self.model = model
        self.window = max(1, round(window_s * FPS))
        self.batch = batch
        self.bfloat16 = bfloat16
        self.mfcc = StreamingMfcc(audio_start)
        self.tracks: dict[int, _Track] = {}
        self._pending: list[int] = []
        """Ticks buffered for the next batch."""
        self._audio: dict[int, torch.Tensor] = {}
        encoder = model.model.visualEncoder
        self.blocks = [_Folded.of(block) for block in
                       (encoder.block1, encoder.block2, encoder.block3)]

    def renewed(self, audio_start: int) -> LightAsdScorer:
        """A scorer with these weights and nothing else, its sound starting at sample
        `audio_start`: for Light-ASD taken up again mid-session, at the present."""
        return type(self)(self.model, self.window / FPS, self.batch, self.bfloat16,
                          audio_start)

    @classmethod
    def load(cls, weights: str, window_s: float, batch: int = 2,
             bfloat16: bool | None = None) -> LightAsdScorer:
        if bfloat16 is None:  # same decisions on the committed scenes, about 1.4x faster
            bfloat16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return cls(load_light_asd(weights_path(weights)), window_s, batch, bfloat16)

    def audio(self, samples: np.ndarray, at: int) -> None:
        self.mfcc.push(samples, at)

    def tick(self, tick: int, crops: dict[int, np.ndarray]) -> dict[int, dict[int, float]]:
        """This tick's crop per live track -> {tick: {track: P(speaking)}} for the ticks
        that became final now (up to tick - 6, for tracks seen long enough)."""
        # A track ends: what it holds is computed first, then it is forgotten.
        ending = self._pending and any(t not in crops for t in self.tracks)
        done = self.flush() if ending else {}
        for gone in [t for t in self.tracks if t not in crops]:
            del self.tracks[gone]
        for track, crop in crops.items():
            self.tracks.setdefault(track, _Track(first=tick)).crops.append(crop)
        self._pending.append(tick)
        if len(self._pending) >= self.batch:
            done.update(self.flush())
        return done

    def restart(self) -> dict[int, dict[int, float]]:
        """Across a gap in the media: what is buffered is computed (its scores), and every
        track starts again at its next crop, as at a track's first frame, instead of
        being fed each tick of the gap. The audio stream goes on."""
        done = self.flush()
        self.tracks.clear()
        self._audio.clear()
        return done

    @torch.inference_mode()
    def flush(self) -> dict[int, dict[int, float]]:
        """Compute the buffered ticks now."""
        if not self._pending:
            return {}
        last, count = self._pending[-1], len(self._pending)
        self._pending = []
        finals = range(last - DELAY - count + 1, last - DELAY + 1)
        if not self.tracks:
            return {f: {} for f in finals}
        frames: dict[int, torch.Tensor] = {}
        for track, state in self.tracks.items():
            x = torch.from_numpy(np.stack(state.crops)).float()
            frames[track] = ((x / 255 - PIXEL_MEAN) / PIXEL_STD)[:, None]  # (T, 1, H, W)
            state.crops = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16):
            for b, block in enumerate(self.blocks):
                frames = self._block(block, b, frames)
                if b < 2:
                    frames = {t: F.max_pool2d(x, 3, 2, 1) for t, x in frames.items()}
        for track, x in frames.items():
            state = self.tracks[track]
            start = state.first + state.fed[2] - BLOCK_DELAY - len(x)
            for i, embedding in enumerate(x.float().amax(dim=(2, 3))):
                state.embeddings.append((start + i, embedding))
            while state.embeddings and state.embeddings[0][0] <= finals[0] - self.window:
                state.embeddings.popleft()
        scores = self._scores(finals)
        self.mfcc.forget_before((finals[0] - self.window - AUDIO_CONTEXT) * MFCC_PER_TICK)
        return scores

    def _scores(self, finals: range) -> dict[int, dict[int, float]]:
        """For each final tick and each track with an embedding there: the last GRU output
        over the window ending at it; windows of one length in one batch."""
        first = finals[0] - self.window + 1
        audio = self._audio_embeddings(range(first, finals[-1] + 1))
        windows: dict[tuple[int, int], torch.Tensor] = {}
        for track, state in self.tracks.items():
            ticks = [t for t, _ in state.embeddings]
            kept = torch.stack([e for _, e in state.embeddings]) if ticks else None
            for f in finals:
                if kept is None or f not in ticks:
                    continue
                end = ticks.index(f) + 1
                begin = max(0, end - self.window)
                windows[(f, track)] = kept[begin:end] + audio[ticks[begin] - first:f - first + 1]
        out: dict[int, dict[int, float]] = {f: {} for f in finals}
        for length in sorted({len(w) for w in windows.values()}):
            keys = [k for k, w in windows.items() if len(w) == length]
            joint = torch.stack([windows[k] for k in keys])
            logits = self.model.lossAV.FC(self.model.model.GRU(joint)[:, -1])
            for (f, track), p in zip(keys, torch.softmax(logits, -1)[:, 1].tolist(),
                                     strict=True):
                out[f][track] = p
        return out

    def _block(self, block: _Folded, b: int, frames: dict[int, torch.Tensor]
               ) -> dict[int, torch.Tensor]:
        """Each track's new frames (T, C, H, W) through block `b` -> the frames that came
        out: two ticks behind what went in, never one before the track's first."""
        out: dict[int, torch.Tensor] = {}
        for length in sorted({len(x) for x in frames.values()}):
            ids = [t for t, x in frames.items() if len(x) == length]
            x = torch.stack([frames[t] for t in ids])  # (B, T, C, H, W)
            got = self._block_batch(block, b, x, ids)
            for i, track in enumerate(ids):
                state = self.tracks[track]
                before = state.fed[b]
                state.fed[b] += length
                real = got[i, max(0, BLOCK_DELAY - before):]
                if len(real):
                    out[track] = real
        return out

    def _block_batch(self, block: _Folded, b: int, x: torch.Tensor,
                     ids: list[int]) -> torch.Tensor:
        batch, frames = x.shape[:2]
        total: torch.Tensor | None = None
        for k in (3, 5):
            weight, bias = block.spatial[k]
            y = F.relu_(F.conv2d(x.flatten(0, 1), weight, bias, block.stride, k // 2))
            size = y.shape[2:]
            y = y.view(batch, frames, y.shape[1], -1)  # (B, T, C, H*W)
            channels, area = y.shape[2:]
            history = torch.stack([
                self.tracks[t].caches[b].get(k, y.new_zeros((4, channels, area))) for t in ids])
            window = torch.cat([history, y], dim=1)  # (B, 4+T, C, H*W): time-major
            for i, t in enumerate(ids):
                self.tracks[t].caches[b][k] = window[i, -4:].clone()
            # Output j is for the frame two before new frame j: kernel 5 over window
            # frames j..j+4, kernel 3 over j+1..j+3, each a (time, channel) slice that lies
            # contiguous in memory, so one matrix product covers every j.
            skip = (5 - k) // 2
            taps = window.as_strided(
                (batch, frames, k * channels, area),
                (window.stride(0), channels * area, area, 1),
                window.storage_offset() + skip * channels * area)
            weight, bias = block.temporal[k]
            z = F.relu_(torch.matmul(weight, taps) + bias[:, None])
            total = z if total is None else total.add_(z)
        assert total is not None
        weight, bias = block.last
        out = F.relu_(torch.matmul(weight, total) + bias[:, None])
        return out.view(batch, frames, out.shape[2], *size)

    def _audio_embeddings(self, ticks: range) -> torch.Tensor:
        """Audio embedding per tick (len(ticks), 128), each from the MFCCs around it."""
        missing = [t for t in ticks if t not in self._audio]
        if missing:
            feats = torch.stack([torch.from_numpy(self.mfcc.window(
                (t - AUDIO_CONTEXT) * MFCC_PER_TICK, (t + AUDIO_CONTEXT + 1) * MFCC_PER_TICK))
                for t in missing])
            out = self.model.model.audioEncoder(feats[:, None].transpose(2, 3))
            for t, embedding in zip(missing, out[:, AUDIO_CONTEXT], strict=True):
                self._audio[t] = embedding
        for old in [t for t in self._audio if t < ticks.start]:
            del self._audio[old]
        return torch.stack([self._audio[t] for t in ticks])

