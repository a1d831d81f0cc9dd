"""FinPercep as a ComfyUI custom-node folder (clone this repository into ``ComfyUI/custom_nodes/``).

ComfyUI (V3 node API) calls :func:`comfy_entrypoint`; the nodes live in ``comfyui_finpercep/``.
Importing this file does nothing else: no ComfyUI, torch or diffusers import, no path changes,
until ComfyUI calls the entry point.
"""
import importlib.util as _importlib_util
import os as _os
import sys as _sys

__all__ = ["comfy_entrypoint"]


async def comfy_entrypoint():
    """ComfyUI V3 entry point: returns the FinPercep ``ComfyExtension``."""
    # A plain clone (ComfyUI-Manager installs the requirements, not the package): make the
    # repository's own ``diffusers_ext`` importable.
    root = _os.path.dirname(_os.path.abspath(__file__))
    if _importlib_util.find_spec("diffusers_ext") is None and root not in _sys.path:
        _sys.path.append(root)
    from .comfyui_finpercep import comfy_entrypoint as _entry

    return await _entry()
