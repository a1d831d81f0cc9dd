"""SRMD / SRMDNF (Zhang, Zuo & Zhang, CVPR 2018: "Learning a Single Convolutional Super-Resolution
Network for Multiple Degradations") in plain PyTorch.

SRMD is a plain VGG-style net (12 3x3 convs, 128 channels, ReLU, PixelShuffle) whose input is the
LR image with *degradation maps* concatenated along the channels:

* 3 RGB channels in [0, 1];
* 15 constant planes: the **kernel code**, the PCA projection (onto 15 principal components learnt
  from SRMD's training kernels, isotropic and anisotropic Gaussians of a 15x15 support) of the blur
  kernel that produced the LR image; the network undoes that blur;
* SRMD only (not SRMDNF, "noise-free"): 1 constant plane ``noise_level / 255``, the standard
  deviation (on the 0..255 scale) of the AWGN the network should remove. SRMD was trained with
  levels 0..75; the ncnn program ``srmd-ncnn-vulkan`` exposes ``-n`` -1..10, where -1 selects
  SRMDNF and 0..10 SRMD (its default is 3).

The ncnn program always uses one fixed kernel code, :data:`NCNN_KERNEL_CODE` (copied from nihui's
``srmd-ncnn-vulkan`` ``src/srmd_preproc.comp``, ``degradation_vector``), and so do we by default.
The PCA basis itself is not shipped with the weights, so codes of other kernels cannot be
computed here; instead :meth:`SRMD.forward` takes

* ``kernel_code``: any 15-d code (override), e.g. one computed with SRMD's own PCA matrix, and
* ``kernel_scale``: a factor on the code (default 1). Measured (x4, astronaut photo, Gaussian blur
  sigma then 4x decimation, noise level 0; PSNR-best factor per true sigma): sigma 0.8 -> 1.5,
  1.2 -> 1.25, 1.6 -> 0.75, 2.0 -> 0.5, 2.6 -> 0.5, 3.2 -> 0.0. So the default code stands for a
  Gaussian of sigma about 1.3 (in HR pixels, x4), and **a smaller factor makes the network
  assume a larger blur and sharpen more** (factor 0: high-frequency energy 1.7x the HR photo's:
  over-sharpening, halos), **a larger factor a smaller blur** (softer output: under-sharpening).
  This is the knob the data engine uses to push SRMD away from the true degradation.

The module maps ``B x 3 x H x W`` in [0, 1] to ``B x 3 x sH x sW`` (unclamped; the ncnn program
scales by 255 and rounds).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

#: The kernel code srmd-ncnn-vulkan feeds to every model (``degradation_vector`` in
#: https://github.com/nihui/srmd-ncnn-vulkan/blob/master/src/srmd_preproc.comp).
NCNN_KERNEL_CODE = (
    -1.12360956e-08, -1.36899159e-08, 1.85637958e-02, 2.86066886e-08, 3.35292965e-02,
    8.37272935e-08, -2.54424009e-07, -3.16234976e-02, -1.35169253e-02, -1.10466090e-08,
    3.84753793e-02, 3.79465739e-08, -2.44916752e-01, -8.02213490e-01, -5.40549755e-01,
)
KERNEL_CODE_DIM = 15
#: srmd-ncnn-vulkan's default ``-n``.
NCNN_DEFAULT_NOISE_LEVEL = 3
#: The noise levels (sigma on the 0..255 scale) SRMD was trained for.
MAX_NOISE_LEVEL = 75.0

Level = Union[float, torch.Tensor]


class SRMD(nn.Module):
    """SRMD (``noise_input=True``, 19 input channels) or SRMDNF (``noise_input=False``, 18).

    ``forward(lr, noise_level=None, kernel_code=None, kernel_scale=1.0)``:

    * ``noise_level``: SRMD: a float or a ``(B,)`` tensor in [0, 75] (default
      :data:`NCNN_DEFAULT_NOISE_LEVEL`); ``-1`` is refused (that is SRMDNF: load ``srmdnf-x<s>``).
      SRMDNF: ``None`` or ``-1`` only.
    * ``kernel_code``: ``(15,)`` or ``(B, 15)``; default :data:`NCNN_KERNEL_CODE`.
    * ``kernel_scale``: a float or ``(B,)`` tensor multiplying the code (see the module docstring).
    """

    def __init__(self, upscale: int = 4, noise_input: bool = True, num_feat: int = 128,
                 num_conv: int = 12) -> None:
        super().__init__()
        self.scale = upscale
        self.noise_input = noise_input
        in_ch = 3 + KERNEL_CODE_DIM + int(noise_input)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, num_feat, 3, 1, 1), nn.ReLU()]
        for _ in range(num_conv - 2):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.ReLU()]
        layers.append(nn.Conv2d(num_feat, 3 * upscale ** 2, 3, 1, 1))
        self.body = nn.Sequential(*layers)
        self.upsampler = nn.PixelShuffle(upscale)
        self.register_buffer("default_kernel_code", torch.tensor(NCNN_KERNEL_CODE, dtype=torch.float32))

    @property
    def name_tag(self) -> str:
        return "srmd" if self.noise_input else "srmdnf"

    def _per_image(self, value: Level, batch: int, like: torch.Tensor, what: str) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"{self.name_tag}: {what} must be a number or a ({batch},) tensor, got "
                             f"shape {tuple(t.shape)}")
        return t

    def degradation_maps(self, lr: torch.Tensor, noise_level: Optional[Level] = None,
                         kernel_code: Optional[torch.Tensor] = None, kernel_scale: Level = 1.0) -> torch.Tensor:
        """The ``B x (15 or 16) x H x W`` planes concatenated to ``lr`` (kernel code, noise)."""
        batch, _, height, width = lr.shape
        code = self.default_kernel_code if kernel_code is None else kernel_code
        code = torch.as_tensor(code, dtype=lr.dtype, device=lr.device)
        if code.ndim == 1:
            code = code.expand(batch, -1)
        if code.shape != (batch, KERNEL_CODE_DIM):
            raise ValueError(f"{self.name_tag}: kernel_code must have shape ({KERNEL_CODE_DIM},) or "
                             f"({batch}, {KERNEL_CODE_DIM}), got {tuple(code.shape)}")
        code = code * self._per_image(kernel_scale, batch, lr, "kernel_scale")[:, None]
        planes = [code]
        if self.noise_input:
            level = NCNN_DEFAULT_NOISE_LEVEL if noise_level is None else noise_level
            level_t = self._per_image(level, batch, lr, "noise_level")
            if bool(((level_t < 0) | (level_t > MAX_NOISE_LEVEL)).any()):
                raise ValueError(f"srmd: noise_level must lie in [0, {MAX_NOISE_LEVEL:g}] (sigma on the "
                                 f"0..255 scale), got {level}; for no denoising (-1) load the "
                                 f"srmdnf-x{self.scale} model instead")
            planes.append((level_t / 255.0)[:, None])
        elif noise_level is not None and not (isinstance(noise_level, (int, float)) and noise_level == -1):
            raise ValueError(f"srmdnf (noise-free) has no noise input, got noise_level={noise_level}; "
                             f"pass None or -1, or load srmd-x{self.scale} to denoise")
        maps = torch.cat(planes, 1)
        return maps[:, :, None, None].expand(-1, -1, height, width)

    def forward(self, lr: torch.Tensor, noise_level: Optional[Level] = None,
                kernel_code: Optional[torch.Tensor] = None, kernel_scale: Level = 1.0) -> torch.Tensor:
        maps = self.degradation_maps(lr, noise_level, kernel_code, kernel_scale)
        return self.upsampler(self.body(torch.cat([lr, maps], 1)))
