"""TASTgram-MFN with an ArcFace head (Choi & Choi, ICASSP 2024), the whole model in one file.

    audio (B, 160000) ─┬─ TgramNet (learned STFT-like conv) ───────────┐
                       └─ LogMel (Sgram) ─┬────────────────────────────┤ cat -> (B, 3, 128, 313)
                                          └─ TAgram (temporal gate) ───┘
    -> MobileFaceNet (compact setting) -> embedding (B, 128) -> ArcFace cosine (B, C)

The STgram-MFN ablation (no TAgram, channels [Sgram, Tgram]) is ``arch="stgram"``.
The public code's ``fc_out`` layer (computed, then discarded under ArcFace) is left out:
with 41 classes the model has 1,156,566 parameters.

The anomaly score of a clip for class c is the cross-entropy at c of the ArcFace logits with
the margin on c, ``-log softmax(s * M(cos, c))[c]``, as the released code scores a whole 10 s
clip against its machine ID; ``scores`` returns it for every class at once, so a device can
take the min over a stream's candidate classes without running the model once per class.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from trainer.frontend import LogMel, Lowering

Arch = Literal["tastgram", "stgram"]

# Hyperparameters of the architecture, in one visible place: TgramNet is a Conv1d(1 -> 128,
# kernel 1024, stride 512) and 3 x (LayerNorm(313) -> LeakyReLU(0.2) -> Conv1d(k 3)); the
# MobileFaceNet uses the compact bottleneck setting of the released code (taken there from the
# DCASE 2022 Liu_8 report; the 2022 STgram-MFN paper used the standard, deeper one); the
# ArcFace head has s = 30, m = 0.7.
N_MELS = 128
FRAMES = 313
EMBED_DIM = 128
TGRAM_KERNEL = 1024
TGRAM_HOP = 512
TGRAM_BLOCKS = 3
# MobileFaceNet "compact" bottleneck setting [expansion t, channels c, repeats n, stride s].
BOTTLENECK_SETTING = ((2, 128, 2, 2), (4, 128, 2, 2), (4, 128, 2, 2))
ARCFACE_S = 30.0
ARCFACE_M = 0.7
# The head clamps cosines so that sqrt(1 - cos^2) never sees |cos| > 1: the released code
# computes the head from an fp16 matmul under autocast, where rounding can give |cos| > 1, a
# NaN phi and a whole poisoned row (Noisy-ArcMix drives normal angles to 2-5 degrees, cos
# 0.996-0.999, near fp16's resolution); here the head runs in float32 and clamps.
COS_CLAMP = 1e-7


@dataclass(frozen=True)
class ModelConfig:
    """What is needed to rebuild the network from a checkpoint."""

    num_classes: int
    arch: Arch = "tastgram"
    s: float = ARCFACE_S
    m: float = ARCFACE_M

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return cls(**{k: data[k] for k in ("num_classes", "arch", "s", "m") if k in data})


class TgramNet(nn.Module):
    """A learnable STFT-like front end on the raw waveform: (B, 160000) -> (B, 128, 313)."""

    def __init__(self, channels: int = N_MELS, frames: int = FRAMES) -> None:
        super().__init__()
        self.conv_extractor = nn.Conv1d(
            1, channels, TGRAM_KERNEL, stride=TGRAM_HOP, padding=TGRAM_KERNEL // 2, bias=False
        )
        # LayerNorm over the time axis (313), then activation, then conv: the public order.
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(
                    nn.LayerNorm(frames),
                    nn.LeakyReLU(0.2),
                    nn.Conv1d(channels, channels, 3, stride=1, padding=1, bias=False),
                )
                for _ in range(TGRAM_BLOCKS)
            ]
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv_extractor(audio.unsqueeze(1)))


def tagram(logmel: torch.Tensor) -> torch.Tensor:
    """Temporal attention gram: ``sigmoid(max_f X + mean_f X) * X`` (parameter-free: pooling over frequency).

    On dB values the gate saturates (a loudness gate); reproduced as the paper's code does it.
    """
    gate = torch.sigmoid(logmel.amax(dim=1, keepdim=True) + logmel.mean(dim=1, keepdim=True))
    return gate * logmel


class ConvBlock(nn.Module):
    """Conv2d (no bias) -> BatchNorm -> PReLU (PReLU left out when ``linear``)."""

    def __init__(
        self,
        inp: int,
        oup: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        depthwise: bool = False,
        linear: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, kernel, stride, padding, groups=inp if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(oup)
        self.act = None if linear else nn.PReLU(oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.act is None else self.act(x)


class Bottleneck(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, inp: int, oup: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inp * expansion
        self.residual = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileFaceNet(nn.Module):
    """(B, in_ch, 128, 313) -> embedding (B, 128); ends at 8x20 before the global depthwise conv."""

    def __init__(self, in_channels: int = 3, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.conv1 = ConvBlock(in_channels, 64, 3, 2, 1)
        self.dw_conv1 = ConvBlock(64, 64, 3, 1, 1, depthwise=True)
        layers: list[nn.Module] = []
        inplanes = 64
        for t, c, n, s in BOTTLENECK_SETTING:
            for i in range(n):
                layers.append(Bottleneck(inplanes, c, s if i == 0 else 1, t))
                inplanes = c
        self.blocks = nn.Sequential(*layers)
        self.conv2 = ConvBlock(inplanes, 512, 1, 1, 0)
        self.linear7 = ConvBlock(512, 512, (8, 20), 1, 0, depthwise=True, linear=True)
        self.linear1 = ConvBlock(512, embed_dim, 1, 1, 0, linear=True)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / (kh * kw * module.out_channels)))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.dw_conv1(self.conv1(x)))
        x = self.linear1(self.linear7(self.conv2(x)))
        return x.flatten(1)


def margin_cosine(cosine: torch.Tensor, m: float = ARCFACE_M) -> torch.Tensor:
    """cos(theta + m) for every entry, with the public code's fallback past pi - m.

    Where theta + m would pass pi (cos <= cos(pi - m)), ``cos - sin(pi - m) * m`` keeps the
    target logit monotonic in theta.
    """
    sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=0.0))
    phi = cosine * math.cos(m) - sine * math.sin(m)
    return torch.where(cosine > math.cos(math.pi - m), phi, cosine - math.sin(math.pi - m) * m)


class TASTgramMFN(nn.Module):
    """The network. ``forward(audio) -> (scores, embedding)`` is the export signature."""

    def __init__(
        self,
        num_classes: int,
        arch: Arch = "tastgram",
        s: float = ARCFACE_S,
        m: float = ARCFACE_M,
        lowering: Lowering = "conv",
    ) -> None:
        super().__init__()
        if arch not in ("tastgram", "stgram"):
            raise ValueError(f"unknown architecture {arch!r}: use 'tastgram' or 'stgram'")
        if num_classes < 1:
            raise ValueError("num_classes must be at least 1")
        self.config = ModelConfig(num_classes=num_classes, arch=arch, s=s, m=m)
        self.frontend = LogMel(lowering)
        self.tgram = TgramNet()
        self.mfn = MobileFaceNet(in_channels=3 if arch == "tastgram" else 2)
        self.arc_weight = nn.Parameter(torch.empty(num_classes, EMBED_DIM))
        nn.init.xavier_uniform_(self.arc_weight)

    # -- features ---------------------------------------------------------------------------
    def logmel(self, audio: torch.Tensor) -> torch.Tensor:
        """The Sgram ``(B, 128, 313)`` in dB, always computed in float32."""
        with torch.autocast(device_type=audio.device.type, enabled=False):
            return self.frontend(audio.float())

    def backbone(self, audio: torch.Tensor, logmel: torch.Tensor) -> torch.Tensor:
        """Tgram, Sgram (and TAgram) stacked as channels, through MobileFaceNet -> (B, 128).

        Takes the log-mel separately because mixup mixes it in the dB domain: the released code
        mixes waveform and log-mel with the same lambda and never recomputes the mixture's log-mel.
        """
        tgram = self.tgram(audio)
        if self.config.arch == "tastgram":
            x = torch.stack([tgram, logmel, tagram(logmel)], dim=1)
        else:
            x = torch.stack([logmel, tgram], dim=1)
        return self.mfn(x)

    # -- ArcFace head (float32, also under autocast) ------------------------------------------
    def head_cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        """Cosine between each embedding and each class weight, clamped inside (-1, 1)."""
        with torch.autocast(device_type=embedding.device.type, enabled=False):
            cosine = F.linear(F.normalize(embedding.float()), F.normalize(self.arc_weight.float()))
            return cosine.clamp(-1.0 + COS_CLAMP, 1.0 - COS_CLAMP)

    def scores_from_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        """Anomaly score per class: ``-log softmax(s * M(cos, c))[c]`` for every class c.

        Written as ``softplus(logsumexp_{j != c}(s * cos_j) - s * M(cos, c)_c)``, which is the
        same cross-entropy: the plain ``logsumexp - target`` form rounds to exactly 0 in float32
        where normal clips live (target probability within 1e-7 of 1) and would erase the
        differences between them. The (B, C, C) logsumexp is max-shifted and uses only ops that
        TensorRT parses.
        """
        s, m = self.config.s, self.config.m
        cosine = cosine.float()
        eye = torch.eye(cosine.shape[1], dtype=torch.bool, device=cosine.device)
        target = s * margin_cosine(cosine, m)  # (B, C): the margin logit of class c
        others = torch.where(eye, torch.full_like(eye, -1e4, dtype=cosine.dtype), s * cosine.unsqueeze(1))
        peak = others.amax(dim=2, keepdim=True)
        others_lse = torch.log(torch.exp(others - peak).sum(dim=2)) + peak.squeeze(2)
        return F.softplus(others_lse - target)

    # -- public API ----------------------------------------------------------------------------
    def embed(self, audio: torch.Tensor, logmel: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(audio, self.logmel(audio) if logmel is None else logmel)

    def cosine(self, audio: torch.Tensor, logmel: torch.Tensor | None = None) -> torch.Tensor:
        return self.head_cosine(self.embed(audio, logmel))

    def scores(self, audio: torch.Tensor, logmel: torch.Tensor | None = None) -> torch.Tensor:
        return self.scores_from_cosine(self.cosine(audio, logmel))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(audio)
        return self.scores_from_cosine(self.head_cosine(embedding)), embedding.float()
