"""``FinPercepRewardPipeline``: score images and get their Perceptual Degradation Maps.

    from diffusers_ext import FinPercepRewardPipeline
    pipe = FinPercepRewardPipeline.from_pretrained()          # the bundled default, no download
    out = pipe(["photo.png"] or PIL / numpy / torch images)
    out.scores, out.pdms, out.overlays

Options (stage, tile size, overlap) go through the request layer (:mod:`diffusers_ext.request`);
images larger than the tile size go through the model's tiled forward (bounded memory, seamless maps).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..hub import resolve_model_dir
from ..image_io import load_image, to_batch_tensor
from ..models.finpercep_rm import FinPercepRM
from ..pdm import overlay as render_overlay
from ..request import ScoreRequest, resolve

ImageInput = Union[str, os.PathLike, PIL.Image.Image, np.ndarray, torch.Tensor]
_PATTERNS = ["*.json", "*.safetensors", "*.md", "reward_model/*"]


@dataclass
class FinPercepRewardOutput(BaseOutput):
    """``scores``: float32 ``[B]`` (higher = better; for a calibrated model in (0, 1): clean photos
    near 0.9, heavily damaged near 0.1). ``pdms``: float32 ``[B, H, W]`` in [0, 1]
    (higher = more degraded) at each input's size; a list when the inputs differ in size.
    ``overlays``: heat maps over the inputs (``None`` when not asked for). ``stage``: the
    curriculum stage that produced them. ``raw_scores``: the unbounded head outputs. ``tiles``: how
    many model passes each image took (1 = untiled)."""

    scores: np.ndarray
    pdms: Union[np.ndarray, list]
    overlays: Optional[list]
    stage: int
    raw_scores: Optional[np.ndarray] = None
    tiles: Optional[list] = None


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
    @torch.inference_mode()
    def __call__(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        stage: Union[int, str, None] = None,
        tile_size: Union[int, str, None] = None,
        tile_overlap: Union[int, str, None] = None,
        batch_size: int = 4,
        output_overlays: bool = True,
        overlay_alpha: float = 0.6,
        cmap: str = "inferno",
        return_dict: bool = True,
        on_tile: Optional[Callable[[int, int], None]] = None,
    ) -> Union[FinPercepRewardOutput, tuple]:
        """Score ``images``: file paths, PIL images (any mode), numpy ``HxW[xC]`` arrays, or torch
        tensors (``3xHxW`` or ``Bx3xHxW`` in [0, 1]); a single image or a list.

        Args:
            stage: curriculum stage (``None`` / ``"default"``: the model's). Stage 0 has no map (all zeros).
            tile_size / tile_overlap: images with a side above ``tile_size`` go through tiles
                (default: the model's ``native_size``, see :mod:`diffusers_ext.request`). ``0`` never tiles.
            batch_size: how many same-size images go through the model at once.
            output_overlays / overlay_alpha / cmap: heat-map overlays of the maps.
            on_tile: called as ``on_tile(done, total)`` after each model pass (one per tile, one per
                untiled batch), e.g. for a progress bar with a time estimate in a UI.
        """
        model = self.reward_model
        plan = resolve(model, ScoreRequest.parse(stage, tile_size, tile_overlap))
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple)):
            images = [images]
        images = [load_image(im) if isinstance(im, (str, os.PathLike)) else im for im in images]
        tensors = to_batch_tensor(images, min_size=model.config.min_size)
        device, dtype = self._execution_device, next(model.parameters()).dtype
        raws: list[Optional[float]] = [None] * len(tensors)
        maps: list[Optional[np.ndarray]] = [None] * len(tensors)
        tiles = [plan.tiling.count(*t.shape[-2:]) for t in tensors]

        groups: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(tuple(t.shape[-2:]), []).append(i)
        batches = [idx[j:j + batch_size] for idx in groups.values() for j in range(0, len(idx), batch_size)]
        passes = sum(tiles[idx[0]] for idx in batches)
        bar = self.progress_bar(total=passes) if passes > 1 else None
        done = 0

        def on_pass() -> None:
            nonlocal done
            done += 1
            if bar is not None:
                bar.update()
            if on_tile is not None:
                on_tile(min(done, passes), passes)

        for idx in batches:
            x = torch.cat([tensors[i] for i in idx]).to(device, dtype)
            out = model(x, stage=plan.stage, tiling=plan.tiling, on_pass=on_pass)
            for k, i in enumerate(idx):
                raws[i] = float(out.raw_score[k])
                maps[i] = out.pdm[k, 0].float().cpu().numpy()
        if bar is not None:
            bar.close()
        self.maybe_free_model_hooks()

        raw_arr = np.array(raws, dtype=np.float32)
        score_arr = model.calibrate(torch.from_numpy(raw_arr), plan.stage).numpy().astype(np.float32)
        pdm_list = [np.clip(m, 0.0, 1.0).astype(np.float32) for m in maps]
        same = len({m.shape for m in pdm_list}) == 1
        pdms: Union[np.ndarray, list] = np.stack(pdm_list) if same else pdm_list
        overlays = None
        if output_overlays:
            overlays = [render_overlay(t[0].permute(1, 2, 0).cpu().numpy(), m, alpha=overlay_alpha, cmap=cmap)
                        for t, m in zip(tensors, pdm_list)]
        if not return_dict:
            return score_arr, pdms, overlays
        return FinPercepRewardOutput(scores=score_arr, pdms=pdms, overlays=overlays, stage=plan.stage,
                                     raw_scores=raw_arr, tiles=tiles)
