"""Feed-forward SR networks (Real-ESRGAN RRDBNet / SRVGGNetCompact, waifu2x UpConv7) as ReFL
policies, with LoRA (peft) on their convolutions.

The adapter file is ``pytorch_lora_weights.safetensors`` with keys ``net.<module>.lora_A.weight`` /
``lora_B.weight`` and, in the safetensors metadata, the full LoRA config (``lora_adapter_metadata``:
rank, alpha, targets...) and the network name, so a reload never guesses alpha.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import LORA_WEIGHT_NAME, SRPolicy, lora_config_dict, lora_config_from_dict, resolve_lora_file


class FeedForwardSRPolicy(SRPolicy):
    """``images = clamp(net(lr), 0, 1)`` for a pretrained network ``net`` (``.scale`` attribute)."""

    kind = "feedforward"

    def __init__(self, net: nn.Module, name: str = "custom") -> None:
        super().__init__()
        self.net = net
        self.net_name = name
        self.scale = int(getattr(net, "scale", 4))
        self._checkpointing = False
        self.net.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, name: str, device: str | torch.device = "cpu") -> "FeedForwardSRPolicy":
        """A network of :func:`diffusers_ext.srnets.load_srnet` (e.g. ``realesr-animevideov3-x4``)."""
        from ..srnets import load_srnet

        return cls(load_srnet(name, device=device), name=name)

    # ------------------------------------------------------------------ LoRA
    def lora_modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def default_targets(self) -> list[str]:
        """Every ``nn.Conv2d`` (peft has no LoRA for transposed convolutions)."""
        return [n for n, m in self.net.named_modules() if type(m) is nn.Conv2d]

    def add_lora(self, rank: int = 8, alpha: Optional[float] = None, dropout: float = 0.0,
                 target_modules: Optional[Iterable[str] | str] = None, **kwargs) -> "FeedForwardSRPolicy":
        from peft import LoraConfig, inject_adapter_in_model

        targets = self.default_targets() if target_modules is None else target_modules
        if not isinstance(targets, str):
            targets = list(targets)
            if not targets:
                raise ValueError(f"no LoRA target modules in {self.net_name}")
        config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=dropout,
                            target_modules=targets, init_lora_weights=True)
        self._inject(config)
        return self

    def _inject(self, config) -> None:
        from peft import inject_adapter_in_model

        if getattr(self, "lora_config", None) is not None:
            raise RuntimeError("this policy already has a LoRA adapter; build a fresh policy to load another")
        inject_adapter_in_model(config, self.net)
        self.lora_config = config
        self.freeze_base()

    def save_lora(self, folder: str | os.PathLike) -> Path:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        if getattr(self, "lora_config", None) is None:
            raise RuntimeError("no LoRA adapter to save: call add_lora() first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sd = get_peft_model_state_dict(self.net)
        sd = {f"net.{k}": v.detach().cpu().contiguous() for k, v in sd.items()}
        meta = {"format": "pt", "finpercep_policy": self.kind, "srnet": self.net_name,
                "lora_adapter_metadata": json.dumps(lora_config_dict(self.lora_config), sort_keys=True)}
        path = folder / LORA_WEIGHT_NAME
        save_file(sd, str(path), metadata=meta)
        return path

    def load_lora(self, folder_or_hub_id: str | os.PathLike) -> "FeedForwardSRPolicy":
        """Inject the adapter of a saved folder (rank/alpha/targets from its metadata) and load it."""
        from peft import set_peft_model_state_dict
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = resolve_lora_file(folder_or_hub_id)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "lora_adapter_metadata" not in meta:
            raise ValueError(f"{path} has no 'lora_adapter_metadata': without it alpha would be taken as "
                             f"the rank; re-save it with FeedForwardSRPolicy.save_lora")
        if meta.get("srnet") not in (None, self.net_name):
            raise ValueError(f"{path} is an adapter for {meta['srnet']!r}, this policy is {self.net_name!r}")
        self._inject(lora_config_from_dict(json.loads(meta["lora_adapter_metadata"])))
        sd = load_file(str(path))
        sd = {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")}
        res = set_peft_model_state_dict(self.net, sd)
        unexpected = getattr(res, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{path}: keys {unexpected[:5]} do not fit {self.net_name}")
        return self

    # ------------------------------------------------------------------ forward
    def enable_gradient_checkpointing(self) -> None:
        self._checkpointing = True

    def forward(self, lr: torch.Tensor, generator: Optional[torch.Generator] = None) -> dict[str, Any]:
        if self._checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            out = checkpoint(self.net, lr, use_reentrant=False)
        else:
            out = self.net(lr)
        return {"images": out.clamp(0, 1), "latents": None}

    def card_info(self) -> dict[str, Any]:
        return {"base_model": None, "name": self.net_name}


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
