"""The CLIP ResNet-50 image tower (OpenAI's "ModifiedResNet", the CLIP-IQA backbone of the paper),
written here with open_clip's parameter names so that its published weights load without the
``open_clip`` package (which needs torchvision). Weights come from the Hub on request only."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .base import Backbone

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_HUB_ID = "timm/resnet50_clip.openai"
DEFAULT_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * 4, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * 4)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.act3(out + identity)


class ClipResNetBackbone(Backbone):
    """Four levels (strides 4, 8, 16, 32). ``layers=(3, 4, 6, 3), width=64`` is CLIP RN50."""

    mean = CLIP_MEAN
    std = CLIP_STD

    def __init__(self, layers: tuple[int, ...] | list[int] = (3, 4, 6, 3), width: int = 64,
                 hub_id: str = DEFAULT_HUB_ID) -> None:
        super().__init__()
        self._register_norm()
        self.hub_id = hub_id
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.channels = [width * 4, width * 8, width * 16, width * 32]
        self.strides = [4, 8, 16, 32]

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        mods = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        mods += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.act3(self.bn3(self.conv3(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def load_pretrained(self) -> None:
        """Download the OpenAI CLIP RN50 image tower from ``hub_id`` and load it (needs Hub access)."""
        from ..hub import load_state_dict_from_hub

        state = load_state_dict_from_hub(self.hub_id, DEFAULT_WEIGHT_NAMES)
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        state = {k: v for k, v in state.items() if not k.startswith("attnpool.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(
                f"{self.hub_id} does not hold a CLIP ResNet of this shape: missing={missing[:5]} unexpected={unexpected[:5]}"
            )
