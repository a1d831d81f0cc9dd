"""Render the README figure: the bundled model's scores and PDM overlays on the bundled examples.

    python -m training.render_overlays [--model PATH] [--out docs/overlays.jpg]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from PIL import Image, ImageDraw

from diffusers_ext import FinPercepRewardPipeline

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
        label = f"score {out.scores[0]:.2f}  pdm max {float(out.pdms[0].max()):.2f}"
        draw.rectangle([i * c, 0, i * c + 7 * len(label) + 6, 16], fill="black")
        draw.text((i * c + 3, 2), label, fill="white")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=88)
    print(args.out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
