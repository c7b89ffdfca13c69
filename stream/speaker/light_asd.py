"""Light-ASD (Liao et al., CVPR 2023): a 1.0 M-parameter audio-visual active speaker model.

Written from the paper and the released weights' names and shapes. Each encoder
splits a 3-D (video) or 2-D (audio) convolution into a spatial (video) / frequency
(audio) step and a temporal step, in two branches of kernel 3 and 5 whose sum a
pointwise convolution mixes; the two embeddings are added per video frame and
read by a bidirectional GRU made of two one-way GRUs. The head's second logit is
"speaking". Inputs: grayscale 112x112 face crops at 25 fps (pixel values 0..255)
and 13 MFCCs at 100 fps, four audio frames per video frame.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

CHANNELS = (32, 64, 128)
PIXEL_MEAN, PIXEL_STD = 0.4161, 0.1688
"""Grey-level normalisation the released weights were trained with (values in 0..1)."""


def _norm3d(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, momentum=0.01, eps=0.001)


def _norm2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.01, eps=0.001)


class VisualBlock(nn.Module):
    """(1,k,k) spatial then (k,1,1) temporal convolution for k = 3 and 5, summed, mixed."""

    def __init__(self, inp: int, out: int, downsample: bool = False) -> None:
        super().__init__()
        stride = (1, 2, 2) if downsample else (1, 1, 1)
        for k in (3, 5):
            setattr(self, f"s_{k}", nn.Conv3d(inp, out, (1, k, k), stride, (0, k // 2, k // 2),
                                              bias=False))
            setattr(self, f"bn_s_{k}", _norm3d(out))
            setattr(self, f"t_{k}", nn.Conv3d(out, out, (k, 1, 1), 1, (k // 2, 0, 0), bias=False))
            setattr(self, f"bn_t_{k}", _norm3d(out))
        self.last = nn.Conv3d(out, out, 1, bias=False)
        self.bn_last = _norm3d(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = 0
        for k in (3, 5):
            y = F.relu(getattr(self, f"bn_s_{k}")(getattr(self, f"s_{k}")(x)))
            total = total + F.relu(getattr(self, f"bn_t_{k}")(getattr(self, f"t_{k}")(y)))
        return F.relu(self.bn_last(self.last(total)))


class AudioBlock(nn.Module):
    """(k,1) frequency then (1,k) temporal convolution for k = 3 and 5, summed, mixed."""

    def __init__(self, inp: int, out: int) -> None:
        super().__init__()
        for k in (3, 5):
            setattr(self, f"m_{k}", nn.Conv2d(inp, out, (k, 1), 1, (k // 2, 0), bias=False))
            setattr(self, f"bn_m_{k}", _norm2d(out))
            setattr(self, f"t_{k}", nn.Conv2d(out, out, (1, k), 1, (0, k // 2), bias=False))
            setattr(self, f"bn_t_{k}", _norm2d(out))
        self.last = nn.Conv2d(out, out, 1, bias=False)
        self.bn_last = _norm2d(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = 0
        for k in (3, 5):
            y = F.relu(getattr(self, f"bn_m_{k}")(getattr(self, f"m_{k}")(x)))
            total = total + F.relu(getattr(self, f"bn_t_{k}")(getattr(self, f"t_{k}")(y)))
        return F.relu(self.bn_last(self.last(total)))


class VisualEncoder(nn.Module):
    """(B, 1, T, 112, 112) -> (B, T, 128): spatial size 112 -> 56 -> 28 -> 14, then max."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = VisualBlock(1, CHANNELS[0], downsample=True)
        self.block2 = VisualBlock(CHANNELS[0], CHANNELS[1])
        self.block3 = VisualBlock(CHANNELS[1], CHANNELS[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = (1, 3, 3), (1, 2, 2), (0, 1, 1)
        x = F.max_pool3d(self.block1(x), *pool)
        x = F.max_pool3d(self.block2(x), *pool)
        x = self.block3(x)
        return x.amax(dim=(3, 4)).transpose(1, 2)


class AudioEncoder(nn.Module):
    """(B, 1, 13, 4T) -> (B, T, 128): time pooled by 2 twice, frequency averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = AudioBlock(1, CHANNELS[0])
        self.block2 = AudioBlock(CHANNELS[0], CHANNELS[1])
        self.block3 = AudioBlock(CHANNELS[1], CHANNELS[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = (1, 3), (1, 2), (0, 1)
        x = F.max_pool2d(self.block1(x), *pool)
        x = F.max_pool2d(self.block2(x), *pool)
        x = self.block3(x)
        return x.mean(dim=2).transpose(1, 2)


class BidirectionalGRU(nn.Module):
    """A forward GRU, then a second GRU over its (GELU'd) outputs in reverse time."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gru_forward = nn.GRU(channels, channels, batch_first=True)
        self.gru_backward = nn.GRU(channels, channels, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.gru_forward(x)[0])
        x = self.gru_backward(x.flip(1))[0].flip(1)
        return F.gelu(x)


class Core(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visualEncoder = VisualEncoder()
        self.audioEncoder = AudioEncoder()
        self.GRU = BidirectionalGRU(CHANNELS[2])


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.FC = nn.Linear(CHANNELS[2], 2)


class LightASD(nn.Module):
    """Module names follow the released state dict (`model.*`, `lossAV.*`, `lossV.*`) so
    the weights load strictly; `lossV` (the visual-only auxiliary head of training) is
    loaded but unused at inference."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Core()
        self.lossAV = Head()
        self.lossV = Head()

    def forward(self, faces: torch.Tensor, mfcc: torch.Tensor) -> torch.Tensor:
        """faces (B, T, 112, 112) in 0..255, mfcc (B, 4T, 13) -> speaking logit (B, T).

        The logit is the difference of the two classes, so sigmoid(logit) is the
        head's softmax probability of "speaking"."""
        video = ((faces / 255 - PIXEL_MEAN) / PIXEL_STD).unsqueeze(1)
        visual = self.model.visualEncoder(video)
        audio = self.model.audioEncoder(mfcc.unsqueeze(1).transpose(2, 3))
        joint = self.model.GRU(audio + visual)
        logits = self.lossAV.FC(joint)
        return logits[..., 1] - logits[..., 0]


def load_light_asd(path: Path) -> LightASD:
    """The released weights, every key and shape matched (`strict=True`)."""
    model = LightASD()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
