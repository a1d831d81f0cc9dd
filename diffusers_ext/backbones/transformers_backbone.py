"""Any ``transformers`` backbone (``AutoBackbone``: ResNet, ConvNeXt, Swin, DINOv2, ...) as an encoder.

``repo_id`` names a Hub model; ``config`` (a dict) builds one with random weights instead, which is
how tests construct it offline. Weights are only downloaded by :meth:`load_pretrained`."""
from __future__ import annotations

from typing import Any

import torch

from .base import Backbone


class TransformersBackbone(Backbone):
    def __init__(self, repo_id: str | None = None, config: dict[str, Any] | None = None,
                 out_indices: list[int] | None = None, mean: list[float] | None = None,
                 std: list[float] | None = None) -> None:
        super().__init__()
        try:
            from transformers import AutoBackbone, AutoConfig
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("The 'hf:' backbones need transformers: pip install 'transformers>=4.40'") from e
        if (repo_id is None) == (config is None):
            raise ValueError("TransformersBackbone needs exactly one of repo_id (a Hub id) or config (a dict)")
        if config is not None:
            cfg = AutoConfig.for_model(**config)
        else:
            cfg = AutoConfig.from_pretrained(repo_id)
        if out_indices is not None:
            cfg.out_indices = list(out_indices)
            cfg.out_features = None
        self.repo_id = repo_id
        self.model = AutoBackbone.from_config(cfg)
        if mean is not None:
            self.mean = tuple(mean)
        if std is not None:
            self.std = tuple(std)
        self._register_norm()
        self.channels = list(self.model.channels)
        with torch.no_grad():
            probe = self.model(torch.zeros(1, 3, 64, 64)).feature_maps
        self.strides = [64 // f.shape[-1] for f in probe]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x).feature_maps)

    def load_pretrained(self) -> None:
        """Load the Hub weights of ``repo_id`` into the backbone (needs Hub access or a cache)."""
        if self.repo_id is None:
            raise ValueError("this backbone was built from a config; give repo_id to load pretrained weights")
        from transformers import AutoBackbone

        ref = AutoBackbone.from_pretrained(self.repo_id, out_indices=list(self.model.out_indices))
        self.model.load_state_dict(ref.state_dict())
