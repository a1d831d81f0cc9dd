"""Which reward model the viewer runs: the bundled default, a local folder, or a Hub id.

Pipelines are loaded once and kept in a small thread-safe LRU cache, so switching back and forth
between models (or serving several browser tabs) does not reload weights. The curriculum stage is
never stored on the cached pipeline: every call passes its stage explicitly, so concurrent requests
with different stages cannot interfere.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from diffusers_ext.hub import DEFAULT_MODEL_DIR, is_hub_id

__all__ = ["KINDS", "ModelInfo", "ModelLoadError", "ModelRef", "ModelStore", "describe_model", "stage_choices"]

#: UI label -> kind. The labels are what the model radio shows; the kinds are what the API accepts too.
KINDS: dict[str, str] = {"Bundled default": "default", "Local folder": "folder", "Hub id": "hub"}
_KIND_LABEL = {v: k for k, v in KINDS.items()}


class ModelLoadError(RuntimeError):
    """A reward model that cannot be loaded; the message says which one, why, and what to do."""


@dataclass(frozen=True)
class ModelRef:
    """A model choice: ``kind`` is ``"default"``, ``"folder"`` or ``"hub"``; ``ref`` the folder / Hub id."""

    kind: str = "default"
    ref: str = ""

    @classmethod
    def parse(cls, kind: Optional[str], ref: Optional[str]) -> "ModelRef":
        """From the UI / API: ``kind`` is a kind or its UI label; ``ref`` is ignored for the default."""
        k = KINDS.get(kind or "", kind or "default")
        r = (ref or "").strip()
        if k not in _KIND_LABEL:
            raise ModelLoadError(f"unknown model source {kind!r}; choose one of: {', '.join(KINDS)}")
        if k == "default":
            return cls("default", "")
        if not r:
            what = "a model folder path" if k == "folder" else "a Hub id such as 'owner/name'"
            raise ModelLoadError(f"model source '{_KIND_LABEL[k]}' needs {what} in the model field")
        if k == "folder":
            r = str(Path(r).expanduser().resolve())
        return cls(k, r)

    @classmethod
    def from_cli(cls, value: Optional[str]) -> "ModelRef":
        """``--model``: nothing = the bundled default, an existing folder, else a Hub id ``owner/name``."""
        if not value:
            return cls()
        if os.path.isdir(os.path.expanduser(value)):
            return cls.parse("folder", value)
        if is_hub_id(value):
            return cls("hub", value)
        raise ModelLoadError(f"--model {value!r}: neither an existing folder nor a Hub id of the form 'owner/name'")

    @property
    def kind_label(self) -> str:
        return _KIND_LABEL[self.kind]

    @property
    def label(self) -> str:
        """Short human name: ``bundled default``, the folder name, or the Hub id."""
        if self.kind == "default":
            return "bundled default"
        return Path(self.ref).name if self.kind == "folder" else self.ref


@dataclass(frozen=True)
class ModelInfo:
    """What the UI shows about a loaded model."""

    label: str
    backbone: str
    num_stages: int
    default_stage: int
    tile_size: int
    tile_overlap: int
    min_size: int
    params_m: float
    map_strides: tuple[int, ...]  # map stride of stages 1..N

    def markdown(self) -> str:
        return (f"**{self.label}** · backbone `{self.backbone}` · {self.params_m:.2f} M parameters · "
                f"stages 0..{self.num_stages} (default {self.default_stage}) · tiles of {self.tile_size} px "
                f"(overlap {self.tile_overlap}) above that size · minimum side {self.min_size} px")


def describe_model(pipe, ref: ModelRef) -> ModelInfo:
    """The :class:`ModelInfo` of a loaded ``FinPercepRewardPipeline``."""
    from diffusers_ext.request import default_tiling

    m = pipe.reward_model
    cfg = m.config
    tiling = default_tiling(m)
    return ModelInfo(
        label=ref.label,
        backbone=str(cfg.backbone),
        num_stages=m.num_stages,
        default_stage=m.stage,
        tile_size=tiling.size,
        tile_overlap=tiling.overlap,
        min_size=int(cfg.min_size),
        params_m=sum(p.numel() for p in m.parameters()) / 1e6,
        map_strides=tuple(m.map_resolution(k) for k in range(1, m.num_stages + 1)),
    )


def stage_choices(info: Optional[ModelInfo]) -> list[tuple[str, int]]:
    """Dropdown choices ``(label, value)``: ``-1`` = the model's default stage, then 0..N."""
    if info is None:
        return [("model default", -1)]
    out = [(f"model default ({info.default_stage})", -1), ("0 · global score only (no map)", 0)]
    for k, stride in enumerate(info.map_strides, start=1):
        finest = " · finest" if k == info.num_stages else ""
        out.append((f"{k} · map from stride {stride}{finest}", k))
    return out


class ModelStore:
    """Thread-safe LRU cache of loaded reward pipelines, keyed by :class:`ModelRef`."""

    def __init__(self, device: str = "cpu", capacity: int = 2) -> None:
        self.device = device
        self.capacity = max(1, int(capacity))
        self._pipes: "OrderedDict[ModelRef, object]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ref: ModelRef):
        """The pipeline of ``ref``, loading it on first use (raises :class:`ModelLoadError`)."""
        with self._lock:
            if ref in self._pipes:
                self._pipes.move_to_end(ref)
                return self._pipes[ref]
            pipe = self._load(ref)
            self._pipes[ref] = pipe
            while len(self._pipes) > self.capacity:
                self._pipes.popitem(last=False)
            return pipe

    def _load(self, ref: ModelRef):
        import torch

        from diffusers_ext import FinPercepRewardPipeline

        if ref.kind == "default" and not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise ModelLoadError(
                f"the bundled default reward model is missing ({DEFAULT_MODEL_DIR} has no config.json). "
                "Train it with `python -m training.train_default`, or choose 'Local folder' / 'Hub id' "
                "in the model panel, or start the viewer with --model PATH_OR_HUB_ID"
            )
        if ref.kind == "folder" and not Path(ref.ref).is_dir():
            raise ModelLoadError(f"model folder {ref.ref} does not exist; check the path (it is read on the "
                                 "machine running the viewer)")
        try:
            pipe = FinPercepRewardPipeline.from_pretrained(None if ref.kind == "default" else ref.ref)
            pipe = pipe.to(torch.device(self.device))
        except Exception as e:  # one clear message instead of a traceback in the browser
            hint = ""
            if ref.kind == "hub":
                hint = (" (check the id and your network; offline, HF_HUB_OFFLINE=1 only finds models "
                        "already in the Hub cache)")
            raise ModelLoadError(f"cannot load reward model {ref.label!r} ({ref.kind_label}): "
                                 f"{type(e).__name__}: {e}{hint}") from e
        pipe.set_progress_bar_config(leave=False)
        return pipe

    def loaded(self) -> list[ModelRef]:
        with self._lock:
            return list(self._pipes)
