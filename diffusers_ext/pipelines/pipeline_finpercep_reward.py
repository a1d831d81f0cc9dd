"""``FinPercepRewardPipeline``: score images and get their Perceptual Degradation Maps.

    from diffusers_ext import FinPercepRewardPipeline
    pipe = FinPercepRewardPipeline.from_pretrained()          # the bundled default, no download
    out = pipe(["photo.png"] or PIL / numpy / torch images)
    out.scores, out.pdms, out.overlays

Images larger than the model's tile size are processed in overlapping tiles whose maps are blended
with linear ramps (seamless), and whose pooled features are combined exactly once per feature cell,
so memory stays bounded and the result matches the untiled one on images that fit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..hub import resolve_model_dir
from ..image_io import load_image, to_batch_tensor
from ..models.finpercep_rm import FinPercepRM
from ..pdm import overlay as render_overlay

ImageInput = Union[str, os.PathLike, PIL.Image.Image, np.ndarray, torch.Tensor]
_PATTERNS = ["*.json", "*.safetensors", "*.md", "reward_model/*"]


@dataclass
class FinPercepRewardOutput(BaseOutput):
    """``scores``: float32 ``[B]`` (higher = better; for a calibrated model in (0, 1): clean photos
    near 0.9, heavily damaged near 0.1). ``pdms``: float32 ``[B, H, W]`` in [0, 1]
    (higher = more degraded) at each input's size; a list when the inputs differ in size.
    ``overlays``: heat maps over the inputs (``None`` when not asked for). ``stage``: the
    curriculum stage that produced them. ``raw_scores``: the unbounded head outputs."""

    scores: np.ndarray
    pdms: Union[np.ndarray, list]
    overlays: Optional[list]
    stage: int
    raw_scores: Optional[np.ndarray] = None


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px with at least ``overlap`` px overlap."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def ramp(length: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """1-D blend weight of a tile: linear ramps of ``overlap`` px on the sides that have a neighbour."""
    w = np.ones(length, np.float32)
    r = (np.arange(overlap, dtype=np.float32) + 0.5) / max(overlap, 1)
    n = min(overlap, length)
    if not first:
        w[:n] = np.minimum(w[:n], r[:n])
    if not last:
        w[length - n:] = np.minimum(w[length - n:], r[:n][::-1])
    return w


def owned_cells(starts: list[int], i: int, tile: int, stride: int, n_cells: int) -> slice:
    """The deepest-feature cells of tile ``i`` that it owns: cell centres between the midpoints of
    its overlaps with the previous and the next tile. Every cell of the image is owned once."""
    lo = 0.0 if i == 0 else (starts[i] + starts[i - 1] + tile) / 2
    hi = float("inf") if i == len(starts) - 1 else (starts[i + 1] + starts[i] + tile) / 2
    centres = starts[i] + stride * np.arange(n_cells) + stride / 2
    idx = np.nonzero((centres >= lo) & (centres < hi))[0]
    return slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0)


class FinPercepRewardPipeline(DiffusionPipeline):
    """Global score + Perceptual Degradation Map for any image, with tiling for large ones."""

    model_cpu_offload_seq = "reward_model"

    def __init__(self, reward_model: FinPercepRM) -> None:
        super().__init__()
        self.register_modules(reward_model=reward_model)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Optional[Union[str, os.PathLike]] = None,
                        stage: Optional[int] = None, **kwargs: Any) -> "FinPercepRewardPipeline":
        """Load from a pipeline folder (``model_index.json``), a reward-model folder
        (``config.json``), a Hub id of either, or, with no argument, the bundled default.

        ``stage`` picks the curriculum stage (0 = global only .. N = finest map)."""
        hub_keys = ("revision", "token", "cache_dir", "local_files_only", "force_download")
        hub_kwargs = {k: kwargs.pop(k) for k in hub_keys if k in kwargs}
        folder = resolve_model_dir(pretrained_model_name_or_path, _PATTERNS, **hub_kwargs)
        if (folder / "model_index.json").is_file():
            pipe = super().from_pretrained(str(folder), **kwargs)
        elif (folder / "config.json").is_file():
            dtype = kwargs.pop("torch_dtype", None)
            model = FinPercepRM.from_pretrained(str(folder), torch_dtype=dtype, **kwargs)
            pipe = cls(reward_model=model)
        else:
            raise FileNotFoundError(
                f"{folder} holds neither model_index.json (a pipeline) nor config.json (a FinPercepRM): "
                "pass a folder written by save_pretrained"
            )
        if stage is not None:
            pipe.reward_model.set_stage(stage)
        return pipe

    def set_stage(self, stage: int) -> "FinPercepRewardPipeline":
        self.reward_model.set_stage(stage)
        return self

    # ------------------------------------------------------------------ running
    def _forward_tiled(self, x: torch.Tensor, stage: int, tile: int, overlap: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Score and map of one ``1x3xHxW`` image from overlapping tiles; returns ``([1], [1,1,H,W])``."""
        model = self.reward_model
        s = model.encoder.max_stride
        _, _, h, w = x.shape
        ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
        pdm_acc = torch.zeros(1, 1, h, w, dtype=torch.float32)
        wsum = torch.zeros(1, 1, h, w, dtype=torch.float32)
        pooled, cells = None, 0
        bar = self.progress_bar(total=len(ys) * len(xs)) if len(ys) * len(xs) > 1 else None
        for iy, y0 in enumerate(ys):
            for ix, x0 in enumerate(xs):
                crop = x[..., y0:y0 + tile, x0:x0 + tile]
                th, tw = crop.shape[-2:]
                feats = model.encode(crop)
                logits = model.decode_logits(feats, stage)
                pdm = None if logits is None else model.logits_to_map(logits, (th, tw))
                nh, nw = -(-th // s), -(-tw // s)
                own = (owned_cells(ys, iy, tile, s, nh), owned_cells(xs, ix, tile, s, nw))
                part, n = model.modulated_sum(feats[-1], pdm, (th, tw), owned=own)
                pooled = part.float() if pooled is None else pooled + part.float()
                cells += n
                if pdm is not None:
                    wy = ramp(th, overlap, iy == 0, iy == len(ys) - 1)
                    wx = ramp(tw, overlap, ix == 0, ix == len(xs) - 1)
                    wt = torch.from_numpy(np.outer(wy, wx))[None, None]
                    pdm_acc[..., y0:y0 + th, x0:x0 + tw] += pdm.float().cpu() * wt
                    wsum[..., y0:y0 + th, x0:x0 + tw] += wt
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        full = pdm_acc / wsum.clamp_min(1e-8) if stage > 0 else None
        head_dtype = next(model.score_heads.parameters()).dtype
        raw = model.score_from(
            (pooled / cells).to(self.device, head_dtype), None if full is None else full.to(self.device, head_dtype), stage
        )
        return raw.float().cpu(), (full if full is not None else torch.zeros(1, 1, h, w))

    @torch.inference_mode()
    def __call__(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        stage: Optional[int] = None,
        tile_size: Optional[int] = None,
        tile_overlap: Optional[int] = None,
        batch_size: int = 4,
        output_overlays: bool = True,
        overlay_alpha: float = 0.6,
        cmap: str = "inferno",
        return_dict: bool = True,
    ) -> Union[FinPercepRewardOutput, tuple]:
        """Score ``images``: file paths, PIL images (any mode), numpy ``HxW[xC]`` arrays, or torch
        tensors (``3xHxW`` or ``Bx3xHxW`` in [0, 1]); a single image or a list.

        Args:
            stage: curriculum stage (default: the model's). Stage 0 has no map (all zeros).
            tile_size / tile_overlap: images with a side above ``tile_size`` go through tiles
                (defaults from the model config). ``tile_size=0`` disables tiling.
            batch_size: how many same-size untiled images go through the model at once.
            output_overlays / overlay_alpha / cmap: heat-map overlays of the maps.
        """
        model = self.reward_model
        stage = model.stage if stage is None else model._check_stage(stage)
        tile = model.config.tile_size if tile_size is None else int(tile_size)
        overlap = model.config.tile_overlap if tile_overlap is None else int(tile_overlap)
        s = model.encoder.max_stride
        if tile:
            tile = max(s, tile // s * s)
            if not 0 <= overlap < tile:
                raise ValueError(f"tile_overlap must be in [0, tile_size), got {overlap} with tile_size {tile}")
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple)):
            images = [images]
        images = [load_image(im) if isinstance(im, (str, os.PathLike)) else im for im in images]
        tensors = to_batch_tensor(images, min_size=model.config.min_size)
        dtype = next(model.parameters()).dtype
        raws: list[Optional[torch.Tensor]] = [None] * len(tensors)
        maps: list[Optional[np.ndarray]] = [None] * len(tensors)

        small = [i for i, t in enumerate(tensors) if not tile or max(t.shape[-2:]) <= tile]
        large = [i for i in range(len(tensors)) if i not in set(small)]
        groups: dict[tuple[int, int], list[int]] = {}
        for i in small:
            groups.setdefault(tuple(tensors[i].shape[-2:]), []).append(i)
        batches = [idx[j:j + batch_size] for idx in groups.values() for j in range(0, len(idx), batch_size)]
        bar = self.progress_bar(total=len(batches)) if len(batches) > 1 else None
        for idx in batches:
            x = torch.cat([tensors[i] for i in idx]).to(self.device, dtype)
            out = model(x, stage=stage)
            for k, i in enumerate(idx):
                raws[i] = out.raw_score[k].float().cpu()
                maps[i] = out.pdm[k, 0].float().cpu().numpy()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        for i in large:
            raw, pdm = self._forward_tiled(tensors[i].to(self.device, dtype), stage, tile, overlap)
            raws[i], maps[i] = raw[0], pdm[0, 0].numpy()

        raw_arr = np.array([float(v) for v in raws], dtype=np.float32)
        score_arr = model.calibrate(torch.from_numpy(raw_arr), stage).numpy().astype(np.float32)
        pdm_list = [np.clip(m, 0.0, 1.0).astype(np.float32) for m in maps]
        same = len({m.shape for m in pdm_list}) == 1
        pdms: Union[np.ndarray, list] = np.stack(pdm_list) if same else pdm_list
        overlays = None
        if output_overlays:
            overlays = [render_overlay(t[0].permute(1, 2, 0).numpy(), m, alpha=overlay_alpha, cmap=cmap)
                        for t, m in zip(tensors, pdm_list)]
        if not return_dict:
            return score_arr, pdms, overlays
        return FinPercepRewardOutput(scores=score_arr, pdms=pdms, overlays=overlays, stage=stage, raw_scores=raw_arr)
