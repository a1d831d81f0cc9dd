"""Paste defects into a test-split photo and report what the reward model sees (used by the tests of
the bundled model; the per-family benchmark is ``training.evaluate_generalization``).

    python -m training.probe_defects [--model PATH] [--image examples/astronaut_clean.jpg]

For each defect kind (blur, JPEG q5 blocking, posterization; since data recipe v3 all three are
training families) it prints the map's mean inside the patch, outside it, inside the same region of the
clean photo, and the scores of the clean and the damaged image.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

BOX = (200, 330, 40, 170)  # rows y0:y1, cols x0:x1 of the 384 px astronaut: suit, flag, helmet
KINDS = ("blur", "jpeg", "posterize")


def damage(img: np.ndarray, kind: str, box: tuple[int, int, int, int] = BOX) -> np.ndarray:
    """``img`` (float32 HxWx3) with the ``box`` region damaged by ``kind``."""
    y0, y1, x0, x1 = box
    out = img.copy()
    patch = img[y0:y1, x0:x1]
    if kind == "blur":
        patch = cv2.GaussianBlur(patch, (0, 0), 3.0)
    elif kind == "jpeg":
        ok, enc = cv2.imencode(".jpg", (patch * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 5])
        patch = cv2.imdecode(enc, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
    elif kind == "posterize":  # not an operator of the training data
        patch = np.round(patch * 3) / 3
    else:
        raise ValueError(f"unknown defect kind {kind!r}; choose one of {KINDS}")
    out[y0:y1, x0:x1] = patch
    return out


def paste_and_score(pipe, clean: np.ndarray, kind: str, box: tuple[int, int, int, int] = BOX):
    """``(pdm_clean, pdm_damaged, scores[clean, damaged], inside_mask)``."""
    out = pipe([clean, damage(clean, kind, box)], output_overlays=False)
    inside = np.zeros(out.pdms[1].shape, bool)
    inside[box[0]:box[1], box[2]:box[3]] = True
    return out.pdms[0], out.pdms[1], out.scores, inside


def main(argv: Optional[list[str]] = None) -> int:
    from diffusers_ext import FinPercepRewardPipeline

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--image", type=Path, default=ROOT / "examples" / "astronaut_clean.jpg")
    args = ap.parse_args(argv)
    pipe = FinPercepRewardPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    clean = np.asarray(Image.open(args.image).convert("RGB"), dtype=np.float32) / 255
    print("| defect | map inside | map outside | clean map inside | score clean | score damaged |")
    print("|---|---|---|---|---|---|")
    for kind in KINDS:
        pdm_clean, pdm, scores, inside = paste_and_score(pipe, clean, kind)
        print(f"| {kind} | {pdm[inside].mean():.3f} | {pdm[~inside].mean():.3f} | {pdm_clean[inside].mean():.3f} | "
              f"{scores[0]:.3f} | {scores[1]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
