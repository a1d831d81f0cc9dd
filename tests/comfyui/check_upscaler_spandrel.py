"""In-process check with the ComfyUI venv's python (spandrel and torchvision live there):

    PYTHONPATH=COMFYUI:. VENV/bin/python tests/comfyui/check_upscaler_spandrel.py --cases CASES.json

CASES.json lists ``{"file": upscaler .safetensors, "input": .npy B x H x W x 3, "expected": .npy}``,
written by the pytest side from our own policy (``diffusers_ext.policies.FeedForwardSRPolicy`` with
its LoRA, not merged). For each file this loads it

* with spandrel's ``ModelLoader`` (what chaiNNer and ComfyUI use) and runs the model, and
* through ComfyUI's own core nodes ``Load Upscale Model`` + ``Upscale Image (using Model)``
  (``comfy_extras.nodes_upscale_model``, tiles and all, from ``models/upscale_models``),

and prints one JSON object: per file the architecture spandrel detected, its scale, and the largest
absolute difference of each path from the expected images.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", required=True)
    a = ap.parse_args()
    import numpy as np
    import torch
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
    import folder_paths
    import spandrel

    torch.set_num_threads(2)
    cases = json.loads(Path(a.cases).read_text())
    folders = sorted({str(Path(c["file"]).parent) for c in cases})
    for f in folders:
        folder_paths.add_model_folder_path("upscale_models", f)
    from comfy_extras.nodes_upscale_model import ImageUpscaleWithModel, UpscaleModelLoader

    out = {"torchvision": __import__("torchvision").__version__, "spandrel": spandrel.__version__, "cases": []}
    for c in cases:
        x = torch.from_numpy(np.load(c["input"]))  # B x H x W x 3, ComfyUI's IMAGE layout
        expected = torch.from_numpy(np.load(c["expected"]))
        desc = spandrel.ModelLoader().load_from_file(c["file"])
        with torch.no_grad():
            direct = desc.model.eval()(x.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
        model = UpscaleModelLoader.execute(Path(c["file"]).name).result[0]
        comfy_out = ImageUpscaleWithModel.execute(model, x).result[0]
        out["cases"].append({
            "file": Path(c["file"]).name, "architecture": desc.architecture.id, "scale": desc.scale,
            "shape": list(comfy_out.shape), "expected_shape": list(expected.shape),
            "spandrel_max_abs_err": float((direct - expected).abs().max()),
            "comfy_node_max_abs_err": float((comfy_out.float().cpu() - expected).abs().max()),
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
