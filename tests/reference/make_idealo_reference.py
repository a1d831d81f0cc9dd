"""Write tests/reference/idealo_tfjs_reference.npz: TensorFlow.js's own outputs of the
@upscalerjs/esrgan-legacy@1.0.0 models on a small deterministic image, the reference that
tests/test_srnets_idealo.py holds the PyTorch ports to.

    mkdir -p /tmp/tfjsref && (cd /tmp/tfjsref && npm init -y && npm install @tensorflow/tfjs@4.11.0)
    bash scripts/setup_env.sh train        # or any way of putting the package into the cache
    .venv/bin/python tests/reference/make_idealo_reference.py --node-modules /tmp/tfjsref/node_modules

tfjs 4.11.0 is the version the package's peerDependencies ask for; it is pure JavaScript (CPU backend),
run by node (20.x here). The npz holds ``input`` (H x W x 3 float32 in [0, 1]) and, for each run
``<model folder with _ for />@<range>`` (``div2k_x2@255``), the output (H' x W' x 3, not clipped) with
``<key>:declared_range``, the
``inputRange`` upper bound the package's model definition declares (255 for the RDN models, 1 for RRDN).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from diffusers_ext.srnets.idealo import package_dir

HERE = Path(__file__).resolve().parent
OUT = HERE / "idealo_tfjs_reference.npz"
HEIGHT, WIDTH = 10, 12  # non-square, so a height/width mix-up shows
#: (model folder, range): every RDN at the range UpscalerJS uses (255) and at [0, 1] (the zoo's), RRDN at 1
RUNS = [("gans", 1), *((m, r) for m in ("psnr-small", "div2k/x2", "div2k/x3", "div2k/x4") for r in (255, 1))]


def reference_input() -> np.ndarray:
    """Smooth ramps plus a deterministic pseudo-random texture, H x W x 3 float32 in [0, 1]."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    chans = [0.5 + 0.3 * np.sin(0.9 * y + 0.5 * x + c) + 0.15 * np.cos(2.3 * x * y / (c + 1) + c)
             for c in range(3)]
    return np.clip(np.stack(chans, -1), 0, 1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node-modules", required=True, help="node_modules holding @tensorflow/tfjs@4.11.0")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    image = reference_input()
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"runs": [{"model": m, "range": r} for m, r in RUNS], "height": HEIGHT, "width": WIDTH,
                "input": image.ravel().tolist()}
        (Path(tmp) / "in.json").write_text(json.dumps(spec))
        subprocess.run(["node", str(HERE / "idealo_tfjs_reference.js"), str(package_dir()),
                        str(Path(tmp) / "in.json"), str(Path(tmp) / "out.json")],
                       env={**os.environ, "NODE_PATH": args.node_modules}, check=True)
        out = json.loads((Path(tmp) / "out.json").read_text())
    arrays = {"input": image}
    for key, run in out.items():
        key = key.replace("/", "_")  # div2k/x2@255 -> div2k_x2@255
        arrays[key] = np.asarray(run["output"], dtype=np.float32).reshape(run["shape"])
        arrays[f"{key}:declared_range"] = np.float32(run["inputRange"][1])
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: {', '.join(k for k in arrays if ':' not in k)}")


if __name__ == "__main__":
    main()
