"""FinPercep ComfyUI nodes: thin adapters from ComfyUI types to ``diffusers_ext``.

Nothing here imports ComfyUI, torch or diffusers at import time; the V3 node classes live in
:mod:`comfyui_finpercep.nodes`, which only ComfyUI imports (through :func:`comfy_entrypoint`).
The pure helpers (:mod:`.lora_convert`, :mod:`.masks`, :mod:`.hub_download`) work without ComfyUI.
"""
from __future__ import annotations

NODE_IDS = (
    "FinPercepLoadRewardModel",
    "FinPercepScoreImage",
    "FinPercepBestOfN",
    "FinPercepPDMToInpaintMask",
    "FinPercepCompareToReference",
    "FinPercepLoadSRAdapter",
    "FinPercepOneStepSR",
    "FinPercepLoadExampleImage",
)
"""The registered node ids (``node_list.json`` at the repository root lists exactly these)."""


async def comfy_entrypoint():
    """ComfyUI V3 entry point: the extension whose ``get_node_list`` returns our nodes."""
    from .nodes import FinPercepExtension

    return FinPercepExtension()
