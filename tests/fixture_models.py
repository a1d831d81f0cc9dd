"""Test support: a small deterministic reward model whose map is NOT constant.

The tiny randomly initialised model of ``conftest.make_tiny_model`` gives an almost constant map
(about 0.519 +- 0.0004), so a test of "the tiled map matches the untiled one" or "the regions follow
the map" passes with it whatever the code does. :func:`make_detector_model` is a real
:class:`FinPercepRM` (tiny backbone) whose weights are set by hand, no training, no randomness:

* every encoder level carries one channel, the local high-frequency energy: level 1 is
  ``SiLU(g*L) + SiLU(-g*L)`` (about ``g*|L|``) of the Laplacian ``L`` of the luminance, box-averaged;
  each deeper level box-averages the level above it (stride 2);
* every decoder level reads that channel of its skip feature only, so stage ``k``'s map is
  ``sigmoid(a * energy - b)`` at stage ``k``'s stride: near 0 on a photograph, near 1 on a patch of
  strong noise (the planted defect of :func:`plant_noise`), and in between at strong edges;
* every score head reads the pooled ``energy * (1 - map)`` (the design's modulation) and, from
  stage 1 on, the map's mean and top-fraction mean: a planted defect lowers the score, and so does
  a map that flags more.

``plant_noise`` puts such a defect into an image at a known box; ``defect_photo`` is a real
photograph with one planted defect.
"""
from __future__ import annotations

import numpy as np
import torch

DETECTOR_CONFIG = dict(backbone="tiny", backbone_kwargs={"widths": [4, 4, 4, 4]}, decoder_channels=4, head_hidden=4,
                       min_size=16, native_size=128)
GAIN = 20.0  # g: Laplacian gain of the first level
MAP_SLOPE = 1.5  # a
MAP_OFFSET = 6.0  # b: the energy at which the map is 0.5 (a photo's texture stays well below)

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_BOX = torch.full((3, 3), 1.0 / 9.0)
_CENTRE = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


@torch.no_grad()
def make_detector_model(**overrides):
    """The hand-set detector described in the module docstring (``eval()`` mode, all stages)."""
    from diffusers_ext.models.finpercep_rm import FinPercepRM

    model = FinPercepRM(**{**DETECTOR_CONFIG, **overrides})
    for prm in model.parameters():
        prm.zero_()
    enc = model.encoder
    std = torch.tensor(enc.std)
    first = enc.levels[0]
    for c in range(3):  # luminance of the un-normalised input: (x - mean) / std * std / 3
        first[0].weight[0, c] = GAIN * _LAPLACE * float(std[c]) / 3.0
        first[0].weight[1, c] = -GAIN * _LAPLACE * float(std[c]) / 3.0
    first[2].weight[0, 0] = _BOX
    first[2].weight[0, 1] = _BOX
    for level in enc.levels[1:]:
        level[0].weight[0, 0] = _BOX
        level[2].weight[0, 0] = _CENTRE
    for dec in model.decoder:
        dec.lateral.weight[0, 0, 0, 0] = 1.0
        dec.fuse[0].weight[0, 0] = _CENTRE
        dec.fuse[2].weight[0, 0] = _CENTRE
        dec.head.weight[0, 0] = MAP_SLOPE * _CENTRE
        dec.head.bias[0] = -MAP_OFFSET
    c_top = enc.channels[-1]
    for k, head in enumerate(model.score_heads):
        lin1, lin2 = head.mlp[0], head.mlp[2]
        lin1.weight[0, 0] = 1.0  # pooled energy * (1 - map)
        lin2.weight[0, 0] = -0.05
        lin2.bias[0] = 1.0
        if k > 0 and model.config.score_map_stats:
            lin1.weight[1, c_top] = 4.0  # map mean
            lin1.weight[2, c_top + 1] = 2.0  # top-fraction mean of the map
            lin2.weight[0, 1] = -0.5
            lin2.weight[0, 2] = -0.25
    return model.eval()


def plant_noise(img: np.ndarray, box: tuple[int, int, int, int], sigma: float = 0.25, seed: int = 0) -> np.ndarray:
    """``img`` (HxWx3 float in [0, 1]) with strong Gaussian noise inside ``box`` = ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    out = np.array(img, dtype=np.float32, copy=True)
    rng = np.random.default_rng(seed)
    out[y0:y1, x0:x1] += rng.normal(0.0, sigma, out[y0:y1, x0:x1].shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def smooth_photo(size: int = 256) -> np.ndarray:
    """scikit-image's astronaut, float32 ``size x size x 3`` in [0, 1], lightly smoothed (its
    texture stays far below the detector's threshold)."""
    from skimage import data
    from skimage.filters import gaussian
    from skimage.transform import resize

    img = resize(data.astronaut().astype(np.float32) / 255.0, (size, size), anti_aliasing=True)
    return np.clip(gaussian(img, sigma=1.0, channel_axis=-1), 0, 1).astype(np.float32)


def defect_photo(size: int = 256, box: tuple[int, int, int, int] | None = None, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """``(image, mask, box)``: :func:`smooth_photo` with one noise patch at ``box`` (default: a
    square of a fifth of the side, off-centre, straddling the seams of 128 px tiles)."""
    if box is None:
        s = size // 5
        box = (size // 2 - s // 2 + size // 16, size // 2 - s // 3, size // 2 + s // 2 + size // 16, size // 2 + 2 * s // 3)
    img = plant_noise(smooth_photo(size), box, seed=seed)
    mask = np.zeros((size, size), np.float32)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1.0
    return img, mask, box
