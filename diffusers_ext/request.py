"""The request layer: what a caller may ask of the reward model, checked and resolved in one place.

Every front door (the pipeline, ``finpercep score``, the ComfyUI nodes, the viewer) goes through it:

- **options**: ``stage``, ``tile_size``, ``tile_overlap``. "The model's own value" is spelled
  :data:`DEFAULT` (``"default"``); ``None``, ``""`` and negative numbers (ComfyUI's ``-1``) mean the same.
- **validation**: the stage range, the tile size and overlap, the minimum image side; one wording
  each, and errors (:class:`RequestError`) that name the option so a node or form can point at it.
- **resolution**: :func:`resolve` turns a request into the stage and :class:`~diffusers_ext.tiling.Tiling`
  the model runs (tile sizes rounded to the encoder stride, default overlap derived from the tile).
- **the score record**: :func:`score_record`, the JSON fields of one scored image.

Tile defaults are not model state: a model states the image side it sees in one pass
(``config.native_size``, its training framing) and :func:`default_tiling` derives tiles from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .image_io import check_image_size  # noqa: F401  (re-exported: the one size check)
from .pdm import summary
from .tiling import Tiling

#: The one spelling of "use the model's own value" for an option.
DEFAULT = "default"
#: Tile side for models that state no ``native_size`` (big enough for one pass on most photos).
FALLBACK_TILE_SIZE = 768
_DEFAULT_WORDS = ("", DEFAULT, "model default", "none", "auto")


class RequestError(ValueError):
    """A request option is invalid. ``option`` names it (``"stage"``, ``"tile_size"``, ``"tile_overlap"``)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def parse_option(value: Any, option: str) -> Optional[int]:
    """``None`` for the model's default (``None``, ``""``, ``"default"``, any negative number), else an int.

    Raises RequestError for anything that is not a whole number."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _DEFAULT_WORDS):
        return None
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise RequestError(option, f"{option} {value!r} is not a number: use {DEFAULT!r} for the model's "
                                   "own value or a whole number") from None
    if number != int(number):
        raise RequestError(option, f"{option} {value!r} is not a whole number")
    return None if number < 0 else int(number)


def check_stage(stage: int, num_stages: int) -> int:
    """``stage`` as an int in ``0..num_stages``; RequestError otherwise."""
    if not 0 <= int(stage) <= num_stages:
        raise RequestError("stage", f"stage must be in 0..{num_stages} for this model, got {stage} "
                                    f"(0 = global score only, {num_stages} = finest map; {DEFAULT!r} = the model's stage)")
    return int(stage)


def default_overlap(tile: int) -> int:
    """The overlap used when none is asked for: a sixth of the tile, at most 64 px."""
    return min(64, tile // 6)


def default_tiling(model: Any) -> Tiling:
    """The tiling of a request that asks for none: tiles of the model's ``native_size``."""
    native = model.config.get("native_size") if hasattr(model.config, "get") else None
    tile = int(native) if native else FALLBACK_TILE_SIZE
    return Tiling(tile, default_overlap(tile))


@dataclass(frozen=True)
class ScoreRequest:
    """What a caller asks for; ``None`` = the model's own value. Build it with :meth:`parse`."""

    stage: Optional[int] = None
    tile_size: Optional[int] = None  # 0 = never tile
    tile_overlap: Optional[int] = None

    @classmethod
    def parse(cls, stage: Any = None, tile_size: Any = None, tile_overlap: Any = None) -> "ScoreRequest":
        """From user-facing values (ints, numeric strings, ``"default"``, ``-1``, ``None``)."""
        return cls(parse_option(stage, "stage"), parse_option(tile_size, "tile_size"),
                   parse_option(tile_overlap, "tile_overlap"))


@dataclass(frozen=True)
class ResolvedRequest:
    """What the model runs: a checked stage and a rounded, checked :class:`Tiling`."""

    stage: int
    tiling: Tiling


def resolve(model: Any, request: Optional[ScoreRequest] = None) -> ResolvedRequest:
    """Check ``request`` against ``model`` (a FinPercepRM) and fill in its defaults.

    Tile sizes round down to a multiple of the encoder's largest stride; a tile below the model's
    minimum side, or an overlap outside ``[0, tile)``, is a RequestError."""
    request = request or ScoreRequest()
    stage = model.stage if request.stage is None else check_stage(request.stage, model.num_stages)
    default = default_tiling(model)
    tile = default.size if request.tile_size is None else request.tile_size
    if tile == 0:
        return ResolvedRequest(stage, Tiling(0, 0))
    stride = int(model.encoder.max_stride)
    smallest = max(stride, int(model.config.min_size))
    if tile < smallest:
        raise RequestError("tile_size", f"tile_size {tile} is below this model's smallest tile of {smallest} px: use 0 "
                                        f"(never tile), {DEFAULT!r} ({default.size} px) or at least {smallest}")
    tile = max(stride, tile // stride * stride)
    overlap = default_overlap(tile) if request.tile_overlap is None else request.tile_overlap
    if not 0 <= overlap < tile:
        raise RequestError("tile_overlap", f"tile_overlap must be in [0, tile_size), got {overlap} with tile_size "
                                           f"{tile}; make it smaller, or {DEFAULT!r} ({default_overlap(tile)} px)")
    return ResolvedRequest(stage, Tiling(tile, overlap))


def score_record(name: str, score: float, raw_score: float, pdm: Any, stage: int, num_stages: int,
                 tiles: int, threshold: float = 0.5) -> dict[str, Any]:
    """The JSON fields of one scored image, the same in ``finpercep score`` and the viewer's exports:
    ``image, score, raw_score, pdm_mean, pdm_max, pdm_p95, frac_above, threshold, stage, num_stages,
    width, height, tiles``."""
    st = summary(pdm, threshold)
    height, width = pdm.shape[-2:]
    return {
        "image": name, "score": float(score), "raw_score": float(raw_score),
        "pdm_mean": st["mean"], "pdm_max": st["max"], "pdm_p95": st["p95"], "frac_above": st["frac_above"],
        "threshold": st["threshold"], "stage": int(stage), "num_stages": int(num_stages),
        "width": int(width), "height": int(height), "tiles": int(tiles),
    }
