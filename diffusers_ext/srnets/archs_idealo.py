"""idealo's image-super-resolution networks (RDN and RRDN, github.com/idealo/image-super-resolution
``ISR/models/rdn.py`` / ``rrdn.py``) as plain PyTorch modules, built to the layer graphs of the
TF.js models in npm ``@upscalerjs/esrgan-legacy@1.0.0`` and loaded from them.

* :class:`RDN` (residual dense network): ``F_m1`` and ``F_0`` convs; ``D`` residual dense blocks of
  ``C`` 3x3 conv + ReLU layers whose outputs are concatenated to their input, fused by a 1x1 conv
  (``LFF``) and added to the block input; global fusion of all block outputs (1x1 ``GFF_1``, 3x3
  ``GFF_2``) plus ``F_m1``; then ``UPN1`` (5x5) + ReLU, ``UPN2`` + ReLU, ``UPN3`` (``3 * scale**2``
  channels), nearest upsampling by ``scale`` and a last 3x3 conv ``SR``. The upscalerjs models work
  on pixel values in [0, 255] (their ``inputRange`` / ``outputRange``).
* :class:`RRDN` (the "gans" x4 model): ``Pre_blocks_conv``; ``T`` residual-in-residual dense blocks,
  each of ``D`` dense blocks of ``C`` conv + ReLU layers with a 3x3 ``LFF`` conv, every residual
  scaled by beta = 0.2 (``LRL = x + 0.2 * LFF``, ``RRDB_out = x + 0.2 * LRL_D``); ``post_blocks_conv``
  plus the pre-block features; ``PreShuffle`` conv to ``3 * scale**2`` channels; TensorFlow's
  ``depth_to_space`` (NHWC channel order, not PyTorch's ``PixelShuffle`` order); last conv ``SR``.
  Works on [0, 1].

Every module takes and returns ``B x 3 x H x W`` in [0, 1] (the [0, 255] scaling of RDN happens
inside), outputs are not clamped, convolutions use Keras ``padding="same"`` (symmetric ``k // 2``
zero padding for the odd kernels used here), and each has a ``scale`` attribute.
:meth:`RDN.keras_names` / :meth:`RRDN.keras_names` map module names to the Keras layer names, which
:func:`load_tfjs_weights` uses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .tfjs import TfjsModel


def _conv(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2)


def depth_to_space_nhwc(x: torch.Tensor, block: int) -> torch.Tensor:
    """TensorFlow's ``depth_to_space`` on an NCHW tensor: channel ``(i * block + j) * C_out + c`` of
    input pixel ``(h, w)`` goes to output pixel ``(h * block + i, w * block + j)``, channel ``c``."""
    b, c, h, w = x.shape
    c_out = c // (block * block)
    x = x.view(b, block, block, c_out, h, w)
    return x.permute(0, 3, 4, 1, 5, 2).reshape(b, c_out, h * block, w * block)


class _DenseBlock(nn.Module):
    """``C`` conv + ReLU layers, each fed the concatenation of the block input and all earlier
    outputs, then a fusion conv ``lff`` over the full concatenation (not yet added to the input)."""

    def __init__(self, width: int, growth: int, num_layers: int, lff_kernel: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([_conv(width + i * growth, growth) for i in range(num_layers)])
        self.lff = _conv(width + num_layers * growth, width, lff_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cat = x
        for conv in self.convs:
            cat = torch.cat([cat, F.relu(conv(cat))], 1)
        return self.lff(cat)


class RDN(nn.Module):
    """idealo's RDN; the upscalerjs div2k x2/x3/x4 and psnr-small (x2) models are C=3, D=10, G=G0=64."""

    def __init__(self, scale: int = 2, C: int = 3, D: int = 10, G: int = 64, G0: int = 64,
                 value_range: float = 255.0) -> None:
        super().__init__()
        self.scale, self.value_range = scale, value_range
        self.F_m1 = _conv(3, G0)
        self.F_0 = _conv(G0, G0)
        self.rdbs = nn.ModuleList([_DenseBlock(G0, G, C, lff_kernel=1) for _ in range(D)])
        self.gff1 = _conv(D * G0, G0, 1)
        self.gff2 = _conv(G0, G0)
        self.upn1 = _conv(G0, 64, 5)
        self.upn2 = _conv(64, 32)
        self.upn3 = _conv(32, 3 * scale * scale)
        self.sr = _conv(3 * scale * scale, 3)

    def keras_names(self) -> dict[str, str]:
        names = {"F_m1": "F_m1", "F_0": "F_0", "gff1": "GFF_1", "gff2": "GFF_2", "upn1": "UPN1",
                 "upn2": "UPN2", "upn3": "UPN3", "sr": "SR"}
        for d, block in enumerate(self.rdbs, 1):
            names[f"rdbs.{d - 1}.lff"] = f"LFF_{d}"
            names.update({f"rdbs.{d - 1}.convs.{c - 1}": f"F_{d}_{c}" for c in range(1, len(block.convs) + 1)})
        return names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_m1 = self.F_m1(x * self.value_range)
        lrl = self.F_0(f_m1)
        outs = []
        for block in self.rdbs:
            lrl = block(lrl) + lrl
            outs.append(lrl)
        fdf = self.gff2(self.gff1(torch.cat(outs, 1))) + f_m1
        y = self.upn3(F.relu(self.upn2(F.relu(self.upn1(fdf)))))
        y = F.interpolate(y, scale_factor=self.scale, mode="nearest")
        return self.sr(y) / self.value_range


class RRDN(nn.Module):
    """idealo's RRDN; the upscalerjs "gans" model is T=10, D=3, C=4, G=G0=32, x4, beta 0.2."""

    def __init__(self, scale: int = 4, T: int = 10, D: int = 3, C: int = 4, G: int = 32, G0: int = 32,
                 beta: float = 0.2, value_range: float = 1.0) -> None:
        super().__init__()
        self.scale, self.beta, self.value_range = scale, beta, value_range
        self.pre = _conv(3, G0)
        self.rrdbs = nn.ModuleList([nn.ModuleList([_DenseBlock(G0, G, C, lff_kernel=3) for _ in range(D)])
                                    for _ in range(T)])
        self.post = _conv(G0, G0)
        self.pre_shuffle = _conv(G0, 3 * scale * scale)
        self.sr = _conv(3, 3)

    def keras_names(self) -> dict[str, str]:
        names = {"pre": "Pre_blocks_conv", "post": "post_blocks_conv", "pre_shuffle": "PreShuffle", "sr": "SR"}
        for t, rrdb in enumerate(self.rrdbs, 1):
            for d, block in enumerate(rrdb, 1):
                names[f"rrdbs.{t - 1}.{d - 1}.lff"] = f"LFF_{t}_{d}"
                names.update({f"rrdbs.{t - 1}.{d - 1}.convs.{c - 1}": f"F_{t}_{d}_{c}"
                              for c in range(1, len(block.convs) + 1)})
        return names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre(x * self.value_range)
        out = pre
        for rrdb in self.rrdbs:
            lrl = out
            for block in rrdb:
                lrl = lrl + self.beta * block(lrl)
            out = out + self.beta * lrl
        y = self.pre_shuffle(self.post(out) + pre)
        return self.sr(depth_to_space_nhwc(y, self.scale)) / self.value_range


def load_tfjs_weights(module: RDN | RRDN, model: TfjsModel) -> None:
    """Copy ``model``'s Conv2D weights into ``module`` by Keras layer name (kernels ``kh x kw x in x
    out`` -> ``out x in x kh x kw``). Every conv of the module and every weight of the model must be
    used exactly once; kernel sizes, filter counts, strides and ``padding="same"`` are checked
    against the topology."""
    names = module.keras_names()
    modules = dict(module.named_modules())
    used: set[str] = set()
    with torch.no_grad():
        for mod_name, keras_name in names.items():
            conv = modules[mod_name]
            assert isinstance(conv, nn.Conv2d)
            try:
                layer = model.layer(keras_name)
            except KeyError:
                raise ValueError(f"{model.path}: {type(module).__name__} needs Keras layer {keras_name!r} "
                                 f"(for {mod_name}), the model has none") from None
            cfg = layer.config
            k = conv.kernel_size[0]
            if (layer.class_name != "Conv2D" or list(cfg.get("kernel_size", [])) != [k, k]
                    or cfg.get("filters") != conv.out_channels or list(cfg.get("strides", [1, 1])) != [1, 1]
                    or (k > 1 and cfg.get("padding") != "same") or cfg.get("activation", "linear") != "linear"
                    or list(cfg.get("dilation_rate", [1, 1])) != [1, 1]):
                raise ValueError(f"{model.path}: layer {keras_name!r} ({layer.class_name} {cfg.get('filters')} "
                                 f"filters, kernel {cfg.get('kernel_size')}, padding {cfg.get('padding')}) does not "
                                 f"match {mod_name}: Conv2d {conv.in_channels}->{conv.out_channels}, kernel {k}")
            weights = model.layer_weights(keras_name)
            if set(weights) != {"kernel", "bias"}:
                raise ValueError(f"{model.path}: layer {keras_name!r} has weights {sorted(weights)}, "
                                 f"expected kernel and bias")
            kernel = torch.from_numpy(weights["kernel"].transpose(3, 2, 0, 1).copy())
            if kernel.shape != conv.weight.shape or weights["bias"].shape != tuple(conv.bias.shape):
                raise ValueError(f"{model.path}: layer {keras_name!r} kernel {tuple(weights['kernel'].shape)} "
                                 f"(Keras layout) does not fit {mod_name}.weight {tuple(conv.weight.shape)}")
            conv.weight.copy_(kernel)
            conv.bias.copy_(torch.from_numpy(weights["bias"].copy()))
            used.update({f"{keras_name}/kernel", f"{keras_name}/bias"})
    unused = sorted(set(model.weights) - used)
    if unused:
        raise ValueError(f"{model.path}: {len(unused)} weights have no place in {type(module).__name__} "
                         f"(e.g. {unused[:3]}): wrong architecture or hyper-parameters")
    convs = {n for n, m in modules.items() if isinstance(m, nn.Conv2d)}
    if convs - set(names):
        raise ValueError(f"{type(module).__name__}: convolutions without a Keras name: {sorted(convs - set(names))[:3]}")
