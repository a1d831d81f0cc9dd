"""FinPercep as a ComfyUI custom-node folder (clone this repository into ``ComfyUI/custom_nodes/``).

ComfyUI (V3 node API) calls :func:`comfy_entrypoint`; the nodes live in ``comfyui_finpercep/``.
Importing this file does nothing else: no ComfyUI, torch or diffusers import, no path changes,
until ComfyUI calls the entry point.
"""
import importlib.util as _importlib_util
import os as _os
import sys as _sys

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]

#: ComfyUI serves this folder's .js to its frontend: it shows the nodes' text results on the canvas.
WEB_DIRECTORY = "./comfyui_finpercep/web"


def _ensure_core() -> None:
    """A plain clone (ComfyUI-Manager installs the requirements, not the package) has no installed
    ``diffusers_ext``: load this repository's copy under its own name. ``sys.path`` is left alone, so
    the clone's other top-level folders (``training``, ``demo``, ``tests``...) never shadow anything
    in ComfyUI's process."""
    if "diffusers_ext" in _sys.modules or _importlib_util.find_spec("diffusers_ext") is not None:
        return
    folder = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "diffusers_ext")
    spec = _importlib_util.spec_from_file_location("diffusers_ext", _os.path.join(folder, "__init__.py"),
                                                   submodule_search_locations=[folder])
    module = _importlib_util.module_from_spec(spec)
    _sys.modules["diffusers_ext"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del _sys.modules["diffusers_ext"]
        raise


async def comfy_entrypoint():
    """ComfyUI V3 entry point: returns the FinPercep ``ComfyExtension``."""
    _ensure_core()
    from .comfyui_finpercep import comfy_entrypoint as _entry

    return await _entry()
