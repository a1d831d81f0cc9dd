"""The SR policy interface that ReFL fine-tuning drives (PAPER.md §4; issue 3 §1).

A policy maps a low-resolution batch to a super-resolved batch, differentiably, and carries LoRA
adapters (peft) as its only trainable parameters:

    policy.add_lora(rank=8, alpha=16)                 # inject adapters, freeze everything else
    out = policy(lr, generator=g)                     # {"images": Bx3x(sH)x(sW) in [0,1], "latents": ...}
    policy.save_lora(folder); policy.load_lora(folder_or_hub_id)

``forward`` returns a plain dict (DDP-friendly): ``images`` always, ``latents`` (the predicted x0
latents) for latent-diffusion policies, for a latent fidelity term against ``encode_target(hr)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def lora_config_dict(config: Any) -> dict[str, Any]:
    """A JSON-safe dict of a peft ``LoraConfig`` (sets become sorted lists)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {}
    for k, v in d.items():
        if isinstance(v, set):
            v = sorted(v)
        out[k] = v
    return json.loads(json.dumps(out, default=str))


def lora_config_from_dict(d: dict[str, Any]):
    """Rebuild a ``LoraConfig`` from :func:`lora_config_dict` output, keeping only known fields."""
    import dataclasses

    from peft import LoraConfig

    names = {f.name for f in dataclasses.fields(LoraConfig)}
    kwargs = {k: v for k, v in d.items() if k in names and k not in ("peft_type", "task_type", "revision",
                                                                   "base_model_name_or_path", "auto_mapping")}
    return LoraConfig(**kwargs)


def resolve_lora_file(folder_or_hub_id: str | os.PathLike, weight_name: str = LORA_WEIGHT_NAME) -> Path:
    """The LoRA weight file of a local adapter folder, or downloaded from a Hub repo ``owner/name``."""
    p = Path(folder_or_hub_id).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        f = p / weight_name
        if not f.is_file():
            raise FileNotFoundError(f"{p} has no {weight_name}: is it a LoRA folder written by "
                                    f"training/ccl_lora.py (its final adapter is <output_dir>/lora)?")
        return f
    from ..hub import is_hub_id

    if not is_hub_id(str(folder_or_hub_id)):
        raise FileNotFoundError(f"LoRA {str(folder_or_hub_id)!r} is neither a local folder nor a Hub id 'owner/name'")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(str(folder_or_hub_id), weight_name))


class SRPolicy(nn.Module):
    """Base class of the SR policies. Subclasses set ``kind`` and ``scale`` and implement
    :meth:`forward`, :meth:`lora_targets`, :meth:`save_lora` and :meth:`load_lora`."""

    kind: str = "base"
    scale: int = 4
    #: the LR side the policy needs to be divisible by (VAE / network strides)
    lr_multiple: int = 1

    # ------------------------------------------------------------------ LoRA
    def lora_modules(self) -> dict[str, nn.Module]:
        """The sub-modules that carry adapters, by component name (``unet``, ``vae``, ``net``)."""
        raise NotImplementedError

    def add_lora(self, rank: int = 8, alpha: Optional[float] = None, dropout: float = 0.0,
                 target_modules: Optional[Iterable[str] | str] = None, **kwargs) -> "SRPolicy":
        raise NotImplementedError

    def freeze_base(self) -> None:
        """``requires_grad=False`` on everything but the LoRA parameters."""
        for name, p in self.named_parameters():
            p.requires_grad_("lora_" in name)

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if "lora_" in n]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every LoRA tensor, by its full parameter name in this policy (checkpoints)."""
        return {n: p.detach().cpu().clone() for n, p in self.named_parameters() if "lora_" in n}

    def load_trainable_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        missing = [n for n, p in own.items() if "lora_" in n and n not in sd]
        unexpected = [n for n in sd if n not in own]
        if missing or unexpected:
            raise ValueError(f"LoRA checkpoint does not match this policy: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]} (was it written with other --lora_rank / "
                             f"--lora_targets / --policy settings?)")
        with torch.no_grad():
            for n, t in sd.items():
                own[n].copy_(t.to(own[n].device, own[n].dtype))

    def save_lora(self, folder: str | os.PathLike) -> Path:
        raise NotImplementedError

    def load_lora(self, folder_or_hub_id: str | os.PathLike) -> "SRPolicy":
        raise NotImplementedError

    # ------------------------------------------------------------------ misc
    def encode_target(self, hr: torch.Tensor) -> Optional[torch.Tensor]:
        """Latents of the HR target for a latent fidelity term (``None``: no latent space)."""
        return None

    def enable_gradient_checkpointing(self) -> None:
        raise NotImplementedError

    def card_info(self) -> dict[str, Any]:
        """What the model card says about the base model: ``base_model`` (Hub id or None), ``name``."""
        return {"base_model": None, "name": self.kind}
