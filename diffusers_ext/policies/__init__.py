"""SR policies for ReFL fine-tuning: one interface (:class:`SRPolicy`), three kinds.

    feedforward  pretrained feed-forward SR nets (diffusers_ext.srnets), LoRA on their convolutions
    onestep      one-step SD-based SR (OSEDiff style), LoRA on the UNet attention (+ VAE encoder)
    upscale      diffusers' StableDiffusionUpscalePipeline, multi-step, ReFL on one late step
"""
from __future__ import annotations

from typing import Any

from .base import LORA_WEIGHT_NAME, SRPolicy, resolve_lora_file
from .diffusion import (VAE_LORA_WEIGHT_NAME, OneStepSDPolicy, UpscaleSDPolicy, load_vae_encoder_lora, onestep_sr,
                        predict_x0)
from .feedforward import FeedForwardSRPolicy

POLICY_KINDS = ("feedforward", "onestep", "upscale")

__all__ = ["LORA_WEIGHT_NAME", "POLICY_KINDS", "VAE_LORA_WEIGHT_NAME", "FeedForwardSRPolicy", "OneStepSDPolicy",
           "SRPolicy", "UpscaleSDPolicy", "build_policy", "load_vae_encoder_lora", "onestep_sr", "predict_x0",
           "resolve_lora_file"]


def build_policy(kind: str, pretrained: str, **kwargs: Any) -> SRPolicy:
    """A policy of ``kind`` from ``pretrained``: an srnet name for ``feedforward``, a diffusers folder
    or Hub id for ``onestep`` / ``upscale``."""
    if kind == "feedforward":
        return FeedForwardSRPolicy.from_pretrained(pretrained)
    if kind == "onestep":
        return OneStepSDPolicy.from_pretrained(pretrained, **kwargs)
    if kind == "upscale":
        return UpscaleSDPolicy.from_pretrained(pretrained, **kwargs)
    raise ValueError(f"unknown policy kind {kind!r}; use one of {POLICY_KINDS}")
