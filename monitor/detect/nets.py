"""Torch definitions of the appearance CNN and the geometry GRU (the reference path; ONNX is exported from these)."""

from __future__ import annotations

import torch
from torch import nn

from monitor.detect.bundle import APPEARANCE_INPUT  # noqa: F401  (defined where the service reads it without torch)

# Inputs are scaled to [-1, 1] inside the graph so ONNX and torch see identical uint8-derived floats.


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, groups=cout, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class AppearanceNet(nn.Module):
    """A small CNN over one aligned face crop: a fake logit and a 28x28 blend-boundary map.

    About 0.18 M parameters and ~26 MMAC at 112 px, so it fits the per-frame budget on one core.
    The boundary head (an auxiliary target during training, as in Face X-ray) makes a small
    net attend to where a blend would be rather than to the scene.
    """

    def __init__(self, width: int = 24, in_ch: int = 3) -> None:
        super().__init__()
        w = width
        self.stem = _block(in_ch, w, 2)  # 56
        self.s2 = _block(w, 2 * w, 2)  # 28
        self.s3 = _block(2 * w, 4 * w, 2)  # 14
        self.s4 = _block(4 * w, 6 * w, 2)  # 7
        self.boundary = nn.Conv2d(2 * w, 1, 1)
        self.head = nn.Linear(6 * w * 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: (N, in_ch, 112, 112) float in [0, 255], RGB (two stacked frames when in_ch is 6). Returns (logit (N,), boundary (N, 28, 28))."""
        x = x / 127.5 - 1.0
        x = self.stem(x)
        f2 = self.s2(x)
        x = self.s4(self.s3(f2))
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.head(pooled).squeeze(1), self.boundary(f2).squeeze(1)


def appearance_loss(logit: torch.Tensor, boundary: torch.Tensor, y: torch.Tensor, bound: torch.Tensor, has_bound: torch.Tensor) -> torch.Tensor:
    """The appearance CNN's training objective: fake/genuine cross-entropy plus half the squared
    error of the blend-boundary map, over the samples that have a boundary target."""
    loss = nn.functional.binary_cross_entropy_with_logits(logit, y)
    err = ((torch.sigmoid(boundary) - bound) ** 2).mean(dim=(1, 2))
    return loss + 0.5 * (err * has_bound).sum() / has_bound.sum().clamp(min=1.0)


class GeometryNet(nn.Module):
    """A small GRU over a landmark sequence (aligned-crop units): one fake logit per window.

    Input (N, T, D) with D = ``features.GEOMETRY_DIM``; positions are centred on the window
    mean and scaled inside the graph, velocities are appended, so only shape and motion count.
    """

    def __init__(self, in_dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * in_dim, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = (x - x.mean(dim=1, keepdim=True)) * 20.0
        vel = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1) * 50.0
        h = torch.relu(self.proj(torch.cat([centred, vel], dim=2)))
        _, last = self.gru(h)
        return self.head(last[-1]).squeeze(1)


class AppearanceEnsemble(nn.Module):
    """Mean of the cross-fitting folds' CNNs: the fusion was calibrated on exactly these
    models' out-of-fold scores, so its threshold keeps its meaning on unseen footage."""

    def __init__(self, width: int, members: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(AppearanceNet(width) for _ in range(members))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [m(x) for m in self.members]
        return torch.stack([o[0] for o in outs]).mean(0), torch.stack([o[1] for o in outs]).mean(0)


class GeometryEnsemble(nn.Module):
    """Mean of the cross-fitting folds' GRUs (see ``AppearanceEnsemble``)."""

    def __init__(self, in_dim: int, members: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(GeometryNet(in_dim) for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)
