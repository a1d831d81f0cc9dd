"""Super-resolution architectures as plain PyTorch modules (no torchvision, no BasicSR).

Module structure and parameter names follow the reference implementations, so state dicts from
BasicSR / Real-ESRGAN (``RRDBNet``, ``SRVGGNetCompact``) and nunif's waifu2x (``UpConv7``) load
unchanged:

* :class:`RRDBNet`: ESRGAN / Real-ESRGAN generator (``conv_first``, ``body.<i>.rdb<j>.conv<k>``,
  ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``).
* :class:`SRVGGNetCompact`: Real-ESRGAN's compact VGG-style net (``body.<i>``, PixelShuffle, plus the
  nearest-upsampled input as a residual).
* :class:`UpConv7`: waifu2x UpConv7 (``net.<i>``: six valid 3x3 convs and a 4x4 stride-2
  transposed conv).

All take and return float tensors ``B x 3 x H x W`` with values in [0, 1] and return
``B x 3 x (scale*H) x (scale*W)``. Outputs are **not** clamped (so gradients are not cut at the
range limits); clamp to [0, 1] for display. Every module has an integer ``scale`` attribute and is
fully differentiable (activations are not in-place, so LoRA wrappers on the convolutions are safe).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(in_ch: int, out_ch: int, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, 1, padding)


# ---------------------------------------------------------------------------------------------
# RRDBNet (ESRGAN, Real-ESRGAN x4plus / x4plus-anime)
# ---------------------------------------------------------------------------------------------

class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; output ``0.2 * conv5(...) + x``."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = _conv3x3(num_feat, num_grow_ch)
        self.conv2 = _conv3x3(num_feat + num_grow_ch, num_grow_ch)
        self.conv3 = _conv3x3(num_feat + 2 * num_grow_ch, num_grow_ch)
        self.conv4 = _conv3x3(num_feat + 3 * num_grow_ch, num_grow_ch)
        self.conv5 = _conv3x3(num_feat + 4 * num_grow_ch, num_feat)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(self.lrelu(conv(torch.cat(feats, 1))))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three :class:`ResidualDenseBlock`, scaled residual 0.2."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator as in BasicSR: x4 through two nearest-upsample + conv stages.

    For ``scale`` 2 or 1 the input is first pixel-unshuffled (by 2 or 4), as in BasicSR, so the
    body always runs at 1/4 of the output resolution.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet supports scale 1, 2 or 4, got {scale}")
        self.scale = scale
        self.unshuffle = 4 // scale
        self.conv_first = _conv3x3(num_in_ch * self.unshuffle ** 2, num_feat)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = _conv3x3(num_feat, num_feat)
        self.conv_up1 = _conv3x3(num_feat, num_feat)
        self.conv_up2 = _conv3x3(num_feat, num_feat)
        self.conv_hr = _conv3x3(num_feat, num_feat)
        self.conv_last = _conv3x3(num_feat, num_out_ch)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = self.lrelu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


# ---------------------------------------------------------------------------------------------
# SRVGGNetCompact (Real-ESRGAN realesr-animevideov3 / realesr-general-x4v3)
# ---------------------------------------------------------------------------------------------

class SRVGGNetCompact(nn.Module):
    """Compact VGG-style SR net as in Real-ESRGAN: conv/activation body, PixelShuffle, and the
    nearest-upsampled input added as a residual.

    ``output_scale`` (default: ``upscale``) resizes the x``upscale`` result bicubically (half-pixel
    centres, cubic coefficient -0.75, no antialiasing: ncnn's ``Interp`` type 3). The ncnn
    realesr-animevideov3 x2 and x3 files are built that way: the x4 network followed by a bicubic
    downscale by 0.5 / 0.75.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 16,
                 upscale: int = 4, act_type: str = "prelu", output_scale: int | None = None) -> None:
        super().__init__()
        self.upscale = upscale
        self.scale = upscale if output_scale is None else output_scale
        self.body = nn.ModuleList([_conv3x3(num_in_ch, num_feat), self._activation(act_type, num_feat)])
        for _ in range(num_conv):
            self.body.extend([_conv3x3(num_feat, num_feat), self._activation(act_type, num_feat)])
        self.body.append(_conv3x3(num_feat, num_out_ch * upscale * upscale))
        self.upsampler = nn.PixelShuffle(upscale)

    @staticmethod
    def _activation(act_type: str, num_feat: int) -> nn.Module:
        if act_type == "prelu":
            return nn.PReLU(num_parameters=num_feat)
        if act_type == "relu":
            return nn.ReLU()
        if act_type == "leakyrelu":
            return nn.LeakyReLU(negative_slope=0.1)
        raise ValueError(f"act_type must be 'prelu', 'relu' or 'leakyrelu', got {act_type!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out) + F.interpolate(x, scale_factor=self.upscale, mode="nearest")
        if self.scale != self.upscale:
            size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
            out = F.interpolate(out, size=size, mode="bicubic", align_corners=False)
        return out


# ---------------------------------------------------------------------------------------------
# waifu2x UpConv7
# ---------------------------------------------------------------------------------------------

class UpConv7(nn.Module):
    """waifu2x UpConv7 (x2), parameter names as in nunif (``net.0`` ... ``net.12``).

    The network proper shrinks its input: six unpadded 3x3 convs remove 6 px per side, and the
    4x4 stride-2 transposed conv with padding 3 maps ``n`` to ``2n - 4``. waifu2x therefore feeds
    it an input padded by 7 px on each side (edge replication, as waifu2x-ncnn-vulkan does), and
    ``(H + 14 - 12) * 2 - 4 = 2H`` exactly. :meth:`forward` does that padding itself
    (``input_padding``, default 7), so ``B x 3 x H x W -> B x 3 x 2H x 2W``; construct with
    ``input_padding=0`` to feed pre-padded tiles (then ``H_in -> 2 * H_in - 28``).
    """

    PADDING = 7

    def __init__(self, in_channels: int = 3, out_channels: int = 3, input_padding: int = PADDING) -> None:
        super().__init__()
        self.scale = 2
        self.input_padding = input_padding
        widths = [in_channels, 16, 32, 64, 128, 128, 256]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [_conv3x3(c_in, c_out, padding=0), nn.LeakyReLU(0.1)]
        layers.append(nn.ConvTranspose2d(256, out_channels, 4, 2, 3))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_padding:
            x = F.pad(x, [self.input_padding] * 4, mode="replicate")
        return self.net(x)
