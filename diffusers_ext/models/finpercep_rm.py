"""FinPercep-RM: backbone -> multi-scale features -> progressive decoder -> (global score, PDM).

    {S_global, M_pdm} = RM(I)                    (PAPER.md §1)
    S_global = MLP(pool(f_N ⊙ (1 - resize(M))))  (OURS: "defective regions are dimmed")

Curriculum stages live inside one checkpoint (PAPER.md §5, OURS): stage 0 is a plain global IQA
(backbone + score head 0, no map); stage k (1..N) switches on decoder levels 1..k, deepest first,
so the map gets finer with k, and has its own score head. Training stage k only trains the parts
that stage k adds (see :meth:`FinPercepRM.stage_parameters`), so every earlier stage keeps giving
exactly the outputs it gave when it was trained: the RL trainer loads any stage by number with
``FinPercepRM.from_pretrained(path, stage=k)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..backbones import build_backbone
from ..image_io import check_image_size
from ..request import check_stage
from ..rewards import topk_mean
from ..tiling import Tiling, owned_cells, ramp

DEFAULT_DECODER_CHANNELS = (96, 64, 48, 32, 24, 16)


@dataclass
class FinPercepRMOutput(BaseOutput):
    """``score``: ``[B]``, higher = better: the calibrated score in (0, 1) when the model has a
    calibration (clean photos near 0.9, heavily damaged images near 0.1), else the raw value.
    ``pdm``: ``[B, 1, H, W]`` in [0, 1] at the input size, higher = more degraded (all zeros at
    stage 0, which has no map). ``pdm_logits``: the map's logits at decoder resolution (``None`` at
    stage 0). ``raw_score``: the unbounded head output (what RL can use without saturation)."""

    score: torch.Tensor
    pdm: torch.Tensor
    pdm_logits: Optional[torch.Tensor] = None
    raw_score: Optional[torch.Tensor] = None


class DecoderLevel(nn.Module):
    """One decoder level: lateral 1x1 of the skip feature, fused with the upsampled coarser level."""

    def __init__(self, skip_channels: int, prev_channels: int, channels: int) -> None:
        super().__init__()
        self.lateral = nn.Conv2d(skip_channels, channels, 1)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + prev_channels, channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(),
        )
        self.head = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, skip: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        x = self.lateral(skip)
        if prev is not None:
            prev = F.interpolate(prev, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, prev], dim=1)
        return self.fuse(x)


class ScoreHead(nn.Module):
    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)


class FinPercepRM(ModelMixin, ConfigMixin):
    """The fine-grained perceptual reward model.

    Args:
        backbone: encoder name (see :func:`diffusers_ext.backbones.build_backbone`).
        backbone_kwargs: keyword arguments of that encoder.
        decoder_channels: width of each decoder level, deepest first (one int = all levels).
        num_stages: N, the number of map stages (<= number of backbone levels; default: all).
        stage: the checkpoint's default stage, 0..N (default N, the finest map): the last stage
            trained. Which stage runs is runtime state (:meth:`set_stage`, ``from_pretrained(stage=)``,
            ``forward(stage=)``) and is never written to the config.
        head_hidden: hidden width of the score MLPs.
        score_modulation: ``"one_minus"`` pools ``f_N ⊙ (1 - M)``, ``"none"`` pools ``f_N``.
        score_map_stats: also feed the map's mean and top-fraction mean into the score MLP (OURS).
        score_features: what else the score MLP reads besides the pooled deepest feature: ``"top"``
            nothing; ``"multilevel"`` the spatial mean and standard deviation of every channel of
            every shallower encoder level (texture statistics, as DISTS compares them; OURS, v6).
        map_stat_top_fraction: the fraction used by that top-fraction mean.
        min_size: smallest accepted image side, in pixels.
        score_calibration: per stage 0..N, ``[a, b]`` of the bounded score ``sigmoid(a * raw + b)``
            (fitted after training: the median clean photo maps to 0.9, the first quartile of fully
            damaged images to 0.1; see ``training/calibration.py``). ``None``: scores stay raw.
        native_size: the image side the model sees in one pass (its training framing). Larger images
            go through tiles of this size by default (:func:`diffusers_ext.request.default_tiling`);
            ``None``: 768 px tiles. Older configs' ``tile_size`` is read as this.

    Runtime setting (not saved): ``channels_last`` (default True) runs the encoder on channels-last
    activations; the weights stay as stored. Same outputs to float rounding, 1.5-1.9x faster on our
    CPU (``benchmarks/bench_fastpath.py``); set it False for the plain NCHW path.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False
    channels_last: bool = True

    @register_to_config
    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        backbone_kwargs: Optional[dict] = None,
        decoder_channels: int | Sequence[int] = DEFAULT_DECODER_CHANNELS,
        num_stages: Optional[int] = None,
        stage: Optional[int] = None,
        head_hidden: int = 128,
        score_modulation: str = "one_minus",
        score_map_stats: bool = True,
        score_features: str = "top",
        map_stat_top_fraction: float = 0.01,
        min_size: int = 32,
        native_size: Optional[int] = None,
        score_calibration: Optional[Sequence[Sequence[float]]] = None,
    ) -> None:
        super().__init__()
        if score_modulation not in ("one_minus", "none"):
            raise ValueError(f"score_modulation must be 'one_minus' or 'none', got {score_modulation!r}")
        if score_features not in ("top", "multilevel"):
            raise ValueError(f"score_features must be 'top' or 'multilevel', got {score_features!r}")
        self.encoder = build_backbone(backbone, **(backbone_kwargs or {}))
        levels = len(self.encoder.channels)
        n = levels if num_stages is None else int(num_stages)
        if not 1 <= n <= levels:
            raise ValueError(f"num_stages must be in 1..{levels} for backbone {backbone!r}, got {num_stages}")
        widths = [decoder_channels] * n if isinstance(decoder_channels, int) else list(decoder_channels)
        if len(widths) < n:
            raise ValueError(f"decoder_channels needs {n} entries (deepest first), got {len(widths)}")
        skips = self.encoder.channels[::-1][:n]  # deepest first
        self.decoder = nn.ModuleList(
            DecoderLevel(skips[j], widths[j - 1] if j else 0, widths[j]) for j in range(n)
        )
        c_top = self.encoder.channels[-1]
        if score_features == "multilevel":
            c_top += 2 * sum(self.encoder.channels[:-1])
        extra = 2 if score_map_stats else 0
        self.score_heads = nn.ModuleList(
            [ScoreHead(c_top, head_hidden)] + [ScoreHead(c_top + extra, head_hidden) for _ in range(n)]
        )
        self.register_to_config(num_stages=n, stage=n if stage is None else stage)
        self._stage = self._check_stage(self.config.stage)
        if score_calibration is not None and len(score_calibration) != n + 1:
            raise ValueError(f"score_calibration needs one [a, b] per stage 0..{n}, got {len(score_calibration)}")

    # ------------------------------------------------------------------ loading
    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' config reading, with the tile options of older configs read as ``native_size``."""
        config_dict = dict(config_dict)
        legacy_tile = config_dict.pop("tile_size", None)
        config_dict.pop("tile_overlap", None)
        if legacy_tile and "native_size" not in config_dict:
            config_dict["native_size"] = legacy_tile
        return super().extract_init_dict(config_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, stage: Optional[int] = None, **kwargs):
        """diffusers' ``from_pretrained`` with safetensors only by default (a pickled ``.bin`` is
        refused unless ``use_safetensors=False`` is passed explicitly) and errors that name the
        folder, the problem and the fix. ``stage`` sets the runtime stage (default: the checkpoint's)."""
        model = cls._load(pretrained_model_name_or_path, **kwargs)
        return model if stage is None else model.set_stage(stage)

    @classmethod
    def _load(cls, pretrained_model_name_or_path, **kwargs):
        if kwargs.get("use_safetensors") is None:  # diffusers' pipeline loader passes None through
            kwargs["use_safetensors"] = True
        where = str(pretrained_model_name_or_path)
        if not os.path.exists(where) and (os.path.isabs(where) or where.startswith(".") or where.count("/") > 1):
            raise FileNotFoundError(f"{where} is neither a reward-model folder (no such path) nor a Hub id "
                                    "(owner/name): check the path, or train one with python -m training.train_default")
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except ValueError as e:
            if "expected shape" in str(e) or "size mismatch" in str(e):
                raise ValueError(
                    f"{where}: config.json does not match the weights ({e}). The folder was edited or mixes "
                    "two models; re-save it with save_pretrained, or restore its original config.json"
                ) from e
            raise
        except OSError as e:
            msg = str(e)
            if "no file named diffusion_pytorch_model.safetensors" in msg:
                raise OSError(
                    f"{where} has no diffusion_pytorch_model.safetensors. FinPercep loads safetensors only by "
                    "default; a pickled .bin can run code when loaded. Convert it once, or pass "
                    "use_safetensors=False if you trust the file"
                ) from e
            if "Unable to load weights" in msg:
                raise OSError(
                    f"{where}: the weights file is corrupt or truncated (an interrupted download or copy?); "
                    "download or save the model again"
                ) from e
            raise

    # ------------------------------------------------------------------ stages
    @property
    def num_stages(self) -> int:
        return int(self.config.num_stages)

    @property
    def stage(self) -> int:
        """The stage :meth:`forward` runs when given none (runtime state, not saved)."""
        return self._stage

    def _check_stage(self, stage: int) -> int:
        return check_stage(stage, self.num_stages)

    def set_stage(self, stage: int) -> "FinPercepRM":
        """Run ``stage`` by default from now on. Runtime only: the config (and so a saved copy) keeps
        the checkpoint's default stage; use :meth:`set_default_stage` to change that."""
        self._stage = self._check_stage(stage)
        return self

    def set_default_stage(self, stage: int) -> "FinPercepRM":
        """Record ``stage`` as the checkpoint's default stage (saved in the config; the trainer marks
        the last stage it trained) and run it."""
        self.register_to_config(stage=self._check_stage(stage))
        return self.set_stage(stage)

    def stage_parameters(self, stage: int) -> Iterator[nn.Parameter]:
        """The parameters that stage ``stage`` adds: backbone + score head 0 for stage 0, decoder
        level k + score head k for stage k. Training one stage trains these and nothing else."""
        stage = self._check_stage(stage)
        if stage == 0:
            yield from self.encoder.parameters()
        else:
            yield from self.decoder[stage - 1].parameters()
        yield from self.score_heads[stage].parameters()

    def map_resolution(self, stage: Optional[int] = None) -> int:
        """The stride (in input pixels) of stage ``stage``'s map before upsampling (0 = no map)."""
        stage = self.stage if stage is None else self._check_stage(stage)
        return 0 if stage == 0 else self.encoder.strides[::-1][stage - 1]

    # ------------------------------------------------------------------ parts
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        hp, wp = self._pad_size((h, w))
        ph, pw = hp - h, wp - w
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, [0, pw, 0, ph], mode=mode)
        return x

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features of ``x`` (``Bx3xHxW`` in [0,1]), padded to a multiple of the max stride."""
        h, w = x.shape[-2:]
        check_image_size(int(w), int(h), int(self.config.min_size))
        x = self._pad(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.encoder(x)

    def decode_logits(self, feats: list[torch.Tensor], stage: int) -> Optional[torch.Tensor]:
        """Map logits of ``stage`` at its decoder resolution (``None`` for stage 0)."""
        d = None
        deep_first = feats[::-1]
        for j in range(stage):
            d = self.decoder[j](deep_first[j], d)
        return None if d is None else self.decoder[stage - 1].head(d)

    def decode_all_logits(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Map logits of every stage 1..N in one pass (deep supervision during training)."""
        d, out = None, []
        for j, (level, skip) in enumerate(zip(self.decoder, feats[::-1])):
            d = level(skip, d)
            out.append(level.head(d))
        return out

    def upsample_logits(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Map logits upsampled to the padded input size and cropped to the image ``size``."""
        up = F.interpolate(logits, size=self._pad_size(size), mode="bilinear", align_corners=False)
        return up[..., : size[0], : size[1]]

    def logits_to_map(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The PDM in [0, 1] at the image ``size`` from decoder-resolution logits."""
        return torch.sigmoid(self.upsample_logits(logits, size))

    def modulated_sum(self, top: torch.Tensor, pdm: Optional[torch.Tensor], size: tuple[int, int],
                      owned: Optional[tuple[slice, slice]] = None) -> tuple[torch.Tensor, int]:
        """Sum of ``f_N ⊙ (1 - M)`` over the deepest feature cells inside the image (and inside
        ``owned``, for tiles) and how many cells that was: the pieces of the pooled feature."""
        s = self.encoder.max_stride
        hv, wv = -(-size[0] // s), -(-size[1] // s)
        f = top[..., :hv, :wv]
        if pdm is not None and self.config.score_modulation == "one_minus":
            h_pad, w_pad = hv * s, wv * s
            m = F.pad(pdm, [0, w_pad - pdm.shape[-1], 0, h_pad - pdm.shape[-2]], mode="replicate")
            f = f * (1.0 - F.avg_pool2d(m, s))
        if owned is not None:
            f = f[..., owned[0], owned[1]]
        return f.sum(dim=(-2, -1)), f.shape[-2] * f.shape[-1]

    def pooled_sums(self, feats: list[torch.Tensor], pdm: Optional[torch.Tensor], size: tuple[int, int],
                    owned: Optional[Callable[[int, int, int], tuple[slice, slice]]] = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums ``[B, F]`` over the feature cells inside the image (and, for a tile, inside
        ``owned(stride, rows, cols)``, ``rows x cols`` the level's cells inside the tile) and the cell
        count of each column ``[F]``: the modulated
        deepest feature, then (``score_features="multilevel"``) every shallower level's values and
        squares; float32. Sums of tiles add up to the whole image's; :meth:`pooled_from_sums` makes the head input."""
        s = self.encoder.max_stride
        top = self.modulated_sum(feats[-1], pdm, size,
                                 None if owned is None else owned(s, -(-size[0] // s), -(-size[1] // s)))
        sums, counts = [top[0].float()], [top[0].new_full((top[0].shape[-1],), float(top[1]), dtype=torch.float32)]
        if self.config.get("score_features", "top") == "multilevel":
            for f, s in zip(feats[:-1], self.encoder.strides[:-1]):
                f = f[..., : -(-size[0] // s), : -(-size[1] // s)].float()
                if owned is not None:
                    rows, cols = owned(s, *f.shape[-2:])
                    f = f[..., rows, cols]
                n = f.new_full((2 * f.shape[1],), float(f.shape[-2] * f.shape[-1]))
                sums.append(torch.cat([f.sum(dim=(-2, -1)), f.square().sum(dim=(-2, -1))], 1))
                counts.append(n)
        return torch.cat(sums, 1), torch.cat(counts)

    def pooled_from_sums(self, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The score MLP's feature input from :meth:`pooled_sums`: the pooled deepest feature, then
        each shallower level's channel means and standard deviations."""
        c = self.encoder.channels[-1]
        mean = sums / counts
        if sums.shape[-1] == c:
            return mean
        parts, i = [mean[:, :c]], c
        for ch in self.encoder.channels[:-1]:
            m, sq = mean[:, i:i + ch], mean[:, i + ch:i + 2 * ch]
            parts += [m, (sq - m.square()).clamp_min(0).add(1e-6).sqrt()]
            i += 2 * ch
        return torch.cat(parts, 1)

    def pooled(self, feats: list[torch.Tensor], pdm: Optional[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """The score MLP's feature input of images of ``size`` (untiled)."""
        return self.pooled_from_sums(*self.pooled_sums(feats, pdm, size)).to(feats[-1].dtype)

    def map_stats(self, pdm: torch.Tensor) -> torch.Tensor:
        """``[B, 2]``: mean and top-fraction mean of each map (inputs of the score MLP)."""
        return torch.stack([pdm.flatten(1).mean(1), topk_mean(pdm, self.config.map_stat_top_fraction)], dim=1)

    def score_from(self, pooled: torch.Tensor, pdm: Optional[torch.Tensor], stage: int) -> torch.Tensor:
        """Global score of ``stage`` from the pooled deepest feature (and the map's statistics)."""
        if stage > 0 and self.config.score_map_stats:
            pooled = torch.cat([pooled, self.map_stats(pdm)], dim=1)
        return self.score_heads[stage](pooled)

    def predict(self, feats: list[torch.Tensor], size: tuple[int, int], stage: int
                ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Score, map (``None`` at stage 0) and map logits of ``stage`` from encoder features of
        images of ``size``: everything :meth:`forward` does after :meth:`encode`."""
        logits = self.decode_logits(feats, stage)
        pdm = None if logits is None else self.logits_to_map(logits, size)
        return self.score_from(self.pooled(feats, pdm, size), pdm, stage), pdm, logits

    @property
    def calibrated(self) -> bool:
        return self.config.get("score_calibration") is not None

    def calibrate(self, raw: torch.Tensor, stage: Optional[int] = None) -> torch.Tensor:
        """The bounded score ``sigmoid(a * raw + b)`` of ``stage`` (identity without a calibration)."""
        cal = self.config.get("score_calibration")
        if cal is None:
            return raw
        a, b = cal[self.stage if stage is None else self._check_stage(stage)]
        return torch.sigmoid(raw * float(a) + float(b))

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, stage: Optional[int] = None, return_dict: bool = True,
                tiling: Optional[Tiling] = None, on_pass: Optional[Callable[[], None]] = None):
        """Score ``images`` (``Bx3xHxW`` in [0, 1]). Differentiable end to end.

        ``tiling``: images with a side above ``tiling.size`` go through overlapping tiles (bounded
        memory): the maps blend with linear ramps and every deepest-feature cell enters the pooled
        feature exactly once, so the result equals the untiled one where that fits. Build it with
        :func:`diffusers_ext.request.resolve`. ``pdm_logits`` is ``None`` for a tiled result.
        ``on_pass``: called after each model pass (one per tile), e.g. to advance a progress bar.

        Returns :class:`FinPercepRMOutput` (or ``(score, pdm)`` when ``return_dict=False``)."""
        stage = self.stage if stage is None else self._check_stage(stage)
        size = tuple(images.shape[-2:])
        if tiling is not None and tiling.applies(*size):
            raw, pdm = self._forward_tiled(images, stage, tiling, on_pass)
            logits = None
        else:
            raw, pdm, logits = self.predict(self.encode(images), size, stage)
            if on_pass is not None:
                on_pass()
        score = self.calibrate(raw, stage)
        if pdm is None:
            pdm = images.new_zeros(images.shape[0], 1, *size)
        if not return_dict:
            return score, pdm
        return FinPercepRMOutput(score=score, pdm=pdm, pdm_logits=logits, raw_score=raw)

    def _forward_tiled(self, images: torch.Tensor, stage: int, tiling: Tiling,
                       on_pass: Optional[Callable[[], None]]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Raw score ``[B]`` and map ``[B, 1, H, W]`` (``None`` at stage 0) of same-size images from tiles."""
        tile, overlap = tiling.size, tiling.overlap
        b, _, h, w = images.shape
        ys, xs = tiling.grid(h, w)
        acc = images.new_zeros(b, 1, h, w, dtype=torch.float32) if stage else None
        wsum = images.new_zeros(1, 1, h, w, dtype=torch.float32) if stage else None
        pooled, cells = None, None
        for iy, y0 in enumerate(ys):
            for ix, x0 in enumerate(xs):
                crop = images[..., y0:y0 + tile, x0:x0 + tile]
                th, tw = crop.shape[-2:]
                feats = self.encode(crop)
                logits = self.decode_logits(feats, stage)
                pdm = None if logits is None else self.logits_to_map(logits, (th, tw))
                def own(stride: int, rows: int, cols: int, iy: int = iy, ix: int = ix) -> tuple[slice, slice]:
                    return owned_cells(ys, iy, tile, stride, rows), owned_cells(xs, ix, tile, stride, cols)
                part, n = self.pooled_sums(feats, pdm, (th, tw), owned=own)
                pooled = part.float() if pooled is None else pooled + part.float()
                cells = n if cells is None else cells + n
                if pdm is not None:
                    wy = ramp(th, overlap, iy == 0, iy == len(ys) - 1)
                    wx = ramp(tw, overlap, ix == 0, ix == len(xs) - 1)
                    wt = torch.from_numpy(np.outer(wy, wx)).to(acc.device)[None, None]
                    acc[..., y0:y0 + th, x0:x0 + tw] += pdm.float() * wt
                    wsum[..., y0:y0 + th, x0:x0 + tw] += wt
                if on_pass is not None:
                    on_pass()
        dtype = next(self.score_heads.parameters()).dtype
        full = None if acc is None else (acc / wsum.clamp_min(1e-8)).to(dtype)
        return self.score_from(self.pooled_from_sums(pooled, cells).to(dtype), full, stage), full

    def _pad_size(self, size: tuple[int, int]) -> tuple[int, int]:
        s = self.encoder.max_stride
        return (-(-size[0] // s) * s, -(-size[1] // s) * s)
