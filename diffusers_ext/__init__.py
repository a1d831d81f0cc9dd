"""FinPercep core library: the FinPercep-RM reward model, its pipeline, rewards and PDM rendering.

Imports are lazy so that ``import diffusers_ext`` stays cheap (ComfyUI imports the repository root
at start-up); the heavy modules load on first attribute access.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "FinPercepRM": "diffusers_ext.models.finpercep_rm",
    "FinPercepRMOutput": "diffusers_ext.models.finpercep_rm",
    "FinPercepRewardPipeline": "diffusers_ext.pipelines.pipeline_finpercep_reward",
    "FinPercepRewardOutput": "diffusers_ext.pipelines.pipeline_finpercep_reward",
    "build_backbone": "diffusers_ext.backbones",
    "DEFAULT_MODEL_DIR": "diffusers_ext.hub",
    "OneStepSRPipeline": "diffusers_ext.pipelines.pipeline_onestep_sr",
    "FullReferencePipeline": "diffusers_ext.pipelines.pipeline_full_reference",
    "FullReferenceOutput": "diffusers_ext.pipelines.pipeline_full_reference",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .backbones import build_backbone
    from .hub import DEFAULT_MODEL_DIR
    from .models.finpercep_rm import FinPercepRM, FinPercepRMOutput
    from .pipelines.pipeline_finpercep_reward import FinPercepRewardOutput, FinPercepRewardPipeline
    from .pipelines.pipeline_full_reference import FullReferenceOutput, FullReferencePipeline


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffusers_ext' has no attribute {name!r}")
