"""Render the README figure: the bundled model's scores and PDM overlays on the bundled examples.

    python -m training.render_overlays [--model PATH] [--out docs/overlays.jpg]

Prints one JSON line per example (score, map mean and max; for the painterly example also the mean
map inside and outside its smoothed patch): the figures of the README caption.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from diffusers_ext import FinPercepRewardPipeline
from training.make_examples import PAINTERLY_BOX

ROOT = Path(__file__).resolve().parent.parent

EXAMPLES = ["astronaut_clean.jpg", "astronaut_realesrgan_x4.png", "butterfly_animevideov3_x4.png",
            "chelsea_local_painterly.png"]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "overlays.jpg")
    ap.add_argument("--cell", type=int, default=256)
    args = ap.parse_args(argv)
    pipe = FinPercepRewardPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    c = args.cell
    sheet = Image.new("RGB", (c * len(EXAMPLES), 2 * c), "white")
    draw = ImageDraw.Draw(sheet)
    for i, name in enumerate(EXAMPLES):
        out = pipe(str(ROOT / "examples" / name))
        image = Image.open(ROOT / "examples" / name).convert("RGB").resize((c, c))
        sheet.paste(image, (i * c, 0))
        sheet.paste(out.overlays[0].resize((c, c)), (i * c, c))
        pdm = out.pdms[0]
        rec = {"image": name, "score": round(float(out.scores[0]), 3), "pdm_mean": round(float(pdm.mean()), 3),
               "pdm_max": round(float(pdm.max()), 3)}
        if name == "chelsea_local_painterly.png":
            inside = np.zeros(pdm.shape, bool)
            inside[PAINTERLY_BOX] = True
            rec.update(patch_pdm_mean=round(float(pdm[inside].mean()), 3),
                       outside_pdm_mean=round(float(pdm[~inside].mean()), 3))
        print(json.dumps(rec))
        label = f"score {out.scores[0]:.2f}  pdm max {float(pdm.max()):.2f}"
        draw.rectangle([i * c, 0, i * c + 7 * len(label) + 6, 16], fill="black")
        draw.text((i * c + 3, 2), label, fill="white")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=88)
    print(args.out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
