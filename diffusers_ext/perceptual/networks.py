"""LPIPS and DISTS as frozen ``nn.Module`` s on torchvision's ImageNet AlexNet / VGG16 features.

Both reproduce their reference implementations exactly (same layers tapped, same order of
operations), with the weights of :mod:`.weights`:

* :class:`LPIPS` follows richzhang/PerceptualSimilarity ``lpips/lpips.py`` + ``pretrained_networks.py``
  (``lpips==0.1.4``, version 0.1, ``lpips=True``): inputs in [0, 1] become [-1, 1] (the reference's
  ``normalize=True``), then ``ScalingLayer`` (shift ``[-.030, -.088, -.188]``, scale
  ``[.458, .448, .450]``); the ReLU outputs of 5 slices (AlexNet ``relu1..relu5``, VGG16 ``relu1_2,
  relu2_2, relu3_3, relu4_3, relu5_3``) are unit-normalised over channels (``x / (||x|| + 1e-10)``),
  squared differences go through the 1x1 linear heads (no bias), and each layer is averaged over
  space (scalar) or bilinearly upsampled to the input size (``align_corners=False``, spatial);
  layers are summed.
* :class:`DISTS` follows ``DISTS_pytorch==0.1`` ``DISTS_pt.py``: ImageNet mean/std normalisation,
  VGG16 with every max-pool replaced by ``L2pooling`` (3x3 Hanning filter, stride 2, padding 1),
  the image itself as stage 0, structure ``(2 m_x m_y + c1)/(m_x^2 + m_y^2 + c1)`` and texture
  ``(2 cov_xy + c2)/(var_x + var_y + c2)`` terms per channel weighted by ``alpha`` / ``beta``
  (normalised by their joint sum), ``score = 1 - sum``.

Both take two ``B x 3 x H x W`` tensors in [0, 1] and are differentiable w.r.t. them (the weights are
frozen). Sides must be at least :data:`MIN_SIZE` pixels (AlexNet's two max-pools need 31).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .weights import backbone_state, dists_state

__all__ = ["DISTS", "LPIPS", "MIN_SIZE"]

#: The smallest image side the network metrics accept.
MIN_SIZE = 32

_ALEX_CHNS = (64, 192, 384, 256, 256)
_VGG_CHNS = (64, 128, 256, 512, 512)
# torchvision features indices after which LPIPS taps the ReLU output (the ends of its 5 slices).
_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}


def _alexnet_features() -> nn.Sequential:
    """torchvision ``alexnet().features`` (same indices), ReLUs not in-place."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )


def _vgg16_features() -> nn.Sequential:
    """torchvision ``vgg16().features`` (same indices), ReLUs not in-place."""
    layers: list[nn.Module] = []
    channels = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU()]
            channels = int(v)
    return nn.Sequential(*layers)


def _check_pair(x: torch.Tensor, y: torch.Tensor, who: str) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != 3:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{who}: {name} must be a Bx3xHxW tensor in [0, 1], got {shape}")
    if x.shape[1:] != y.shape[1:] or y.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"{who}: the two inputs differ in shape, {tuple(x.shape)} vs {tuple(y.shape)}; "
                         "resize one to the other's size first (a reference batch of 1 is compared with every image)")
    if min(x.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"{who}: {x.shape[-1]}x{x.shape[-2]} px is below the minimum of {MIN_SIZE} px per side; "
                         "upscale or pad the images first")


def _freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


def _normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit length over channels, as ``lpips.normalize_tensor``."""
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)


class _TappedFeatures(nn.Module):
    """A torchvision ``features`` stack that returns the outputs after the given indices."""

    def __init__(self, features: nn.Sequential, taps: Sequence[int]) -> None:
        super().__init__()
        self.features = features
        self.taps = tuple(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
                if i == self.taps[-1]:
                    break
        return outs


class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al., CVPR 2018) with the published AlexNet / VGG16 weights and linear heads.

    ``LPIPS(net="alex" | "vgg", spatial=False)``; ``forward(x, y)`` with ``B x 3 x H x W`` tensors in
    [0, 1] returns ``[B]`` (``[B, 1, H, W]`` with ``spatial=True``). Lower is more similar; 0 for
    identical images. Frozen and in eval mode; gradients flow to the inputs.
    """

    def __init__(self, net: str = "alex", spatial: bool = False) -> None:
        super().__init__()
        if net not in _TAPS:
            raise ValueError(f"LPIPS: unknown net {net!r}; choose 'alex' or 'vgg'")
        self.net_name = net
        self.spatial = bool(spatial)
        self.chns = _ALEX_CHNS if net == "alex" else _VGG_CHNS
        self.net = _TappedFeatures(_alexnet_features() if net == "alex" else _vgg16_features(), _TAPS[net])
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, stride=1, padding=0, bias=False) for c in self.chns)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        state = backbone_state(net)
        self.net.load_state_dict({k: v for k, v in state.items() if k.startswith("features.")})
        self.lins.load_state_dict({k[len("lins."):]: v for k, v in state.items() if k.startswith("lins.")})
        _freeze(self)

    def train(self, mode: bool = True) -> "LPIPS":
        """A metric: always stays in eval mode (there is no dropout or batch norm anyway)."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance(x, y, self.spatial)

    def spatial_map(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The ``[B, 1, H, W]`` map whatever ``self.spatial`` says (its mean is close to, not equal
        to, the scalar: bilinear upsampling weighs border cells slightly differently)."""
        return self.distance(x, y, True)

    def distance(self, x: torch.Tensor, y: torch.Tensor, spatial: bool) -> torch.Tensor:
        """``[B]`` (``spatial=False``) or ``[B, 1, H, W]`` (``spatial=True``)."""
        _check_pair(x, y, f"LPIPS({self.net_name!r})")
        x = ((2 * x - 1) - self.shift) / self.scale
        y = ((2 * y - 1) - self.shift) / self.scale
        outs0, outs1 = self.net(x), self.net(y)
        val: torch.Tensor | int = 0
        for k, lin in enumerate(self.lins):
            diff = (_normalize_tensor(outs0[k]) - _normalize_tensor(outs1[k])) ** 2
            layer = lin(diff)
            if spatial:
                layer = F.interpolate(layer, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
            else:
                layer = layer.mean([2, 3], keepdim=True)
            val = val + layer
        assert isinstance(val, torch.Tensor)
        return val if spatial else val.reshape(x.shape[0])


class L2Pooling(nn.Module):
    """DISTS' ``L2pooling``: sqrt of a depthwise 3x3 Hanning blur (stride 2, padding 1) of x^2."""

    def __init__(self, channels: int, filter_size: int = 5, stride: int = 2) -> None:
        super().__init__()
        self.padding = (filter_size - 2) // 2
        self.stride = stride
        a = np.hanning(filter_size)[1:-1]
        g = torch.Tensor(a[:, None] * a[None, :])
        g = g / torch.sum(g)
        self.register_buffer("filter", g[None, None, :, :].repeat((channels, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x ** 2
        out = F.conv2d(x, self.filter, stride=self.stride, padding=self.padding, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS (Ding et al., TPAMI 2020) with the published VGG16 weights and alpha/beta.

    ``forward(x, y)`` with ``B x 3 x H x W`` tensors in [0, 1] returns ``[B]`` in [0, 1]; lower is more
    similar, 0 for identical images. Frozen and in eval mode; gradients flow to the inputs.
    """

    chns = (3, 64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        vgg = _vgg16_features()
        state = backbone_state("vgg")
        vgg.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
        # The reference's stages: max-pools (indices 4, 9, 16, 23) become L2 pooling.
        self.stages = nn.ModuleList([
            nn.Sequential(*vgg[0:4]),
            nn.Sequential(L2Pooling(64), *vgg[5:9]),
            nn.Sequential(L2Pooling(128), *vgg[10:16]),
            nn.Sequential(L2Pooling(256), *vgg[17:23]),
            nn.Sequential(L2Pooling(512), *vgg[24:30]),
        ])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1))
        ab = dists_state()
        self.alpha = nn.Parameter(ab["alpha"].clone(), requires_grad=False)
        self.beta = nn.Parameter(ab["beta"].clone(), requires_grad=False)
        if self.alpha.shape != (1, sum(self.chns), 1, 1) or self.beta.shape != self.alpha.shape:
            raise ValueError(f"DISTS: alpha/beta have shape {tuple(self.alpha.shape)}, expected (1, {sum(self.chns)}, 1, 1)")
        _freeze(self)

    def train(self, mode: bool = True) -> "DISTS":
        """A metric: always stays in eval mode."""
        return super().train(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x, relu1_2, relu2_2, relu3_3, relu4_3, relu5_3]`` (the reference's ``forward_once``)."""
        h = (x - self.mean) / self.std
        feats = [x]
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y, "DISTS")
        feats0, feats1 = self.features(x), self.features(y)
        dist1: torch.Tensor | int = 0
        dist2: torch.Tensor | int = 0
        c1 = c2 = 1e-6
        w_sum = self.alpha.sum() + self.beta.sum()
        alpha = torch.split(self.alpha / w_sum, list(self.chns), dim=1)
        beta = torch.split(self.beta / w_sum, list(self.chns), dim=1)
        for k in range(len(self.chns)):
            x_mean = feats0[k].mean([2, 3], keepdim=True)
            y_mean = feats1[k].mean([2, 3], keepdim=True)
            s1 = (2 * x_mean * y_mean + c1) / (x_mean ** 2 + y_mean ** 2 + c1)
            dist1 = dist1 + (alpha[k] * s1).sum(1, keepdim=True)
            x_var = ((feats0[k] - x_mean) ** 2).mean([2, 3], keepdim=True)
            y_var = ((feats1[k] - y_mean) ** 2).mean([2, 3], keepdim=True)
            xy_cov = (feats0[k] * feats1[k]).mean([2, 3], keepdim=True) - x_mean * y_mean
            s2 = (2 * xy_cov + c2) / (x_var + y_var + c2)
            dist2 = dist2 + (beta[k] * s2).sum(1, keepdim=True)
        assert isinstance(dist1, torch.Tensor) and isinstance(dist2, torch.Tensor)
        return (1 - (dist1 + dist2)).reshape(x.shape[0])
