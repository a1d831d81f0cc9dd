"""The ``finpercep`` command line.

    finpercep score IMAGE... [--model PATH|HUB_ID] [--pdm-dir DIR] [--device cpu|cuda] [--tile N] [--stage K]
    finpercep view [--port P] [--host 127.0.0.1]

``score`` prints one JSON object per image on stdout; a file that cannot be scored gets a one-line
error on stderr naming the file and the reason, the others are still scored, and the exit code is
1 when any failed (0 otherwise).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finpercep", description="FinPercep-RM: score images and map their defects.")
    sub = parser.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", help="global score + Perceptual Degradation Map of images")
    sc.add_argument("images", nargs="+", help="image files (PNG, JPEG, WebP, TIFF, ...)")
    sc.add_argument("--model", default=None, help="reward model folder or Hub id (default: the bundled model)")
    sc.add_argument("--pdm-dir", default=None, help="write <stem>.pdm.npy and <stem>.overlay.png here")
    sc.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ... (default: cpu)")
    sc.add_argument("--tile", type=int, default=None, help="tile size for large images (0 = never tile)")
    sc.add_argument("--stage", type=int, default=None, help="curriculum stage (0 = global only; default: finest)")
    sc.add_argument("--cmap", default="inferno", help="overlay colormap (default: inferno)")
    vw = sub.add_parser("view", help="start the Gradio PDM viewer")
    vw.add_argument("--host", default="127.0.0.1")
    vw.add_argument("--port", type=int, default=7860)
    return parser


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, k = path.stem, 1
    while stem in used:
        k += 1
        stem = f"{path.stem}-{k}"
    used.add(stem)
    return stem


def score_command(args: argparse.Namespace) -> int:
    import torch

    from .image_io import ImageInputError, load_image
    from .pdm import summary
    from .pipelines.pipeline_finpercep_reward import FinPercepRewardPipeline

    try:
        pipe = FinPercepRewardPipeline.from_pretrained(args.model, stage=args.stage).to(torch.device(args.device))
    except Exception as e:  # one clear line instead of a traceback for a bad --model
        print(f"finpercep: cannot load reward model {args.model or '(bundled default)'}: {e}", file=sys.stderr)
        return 2
    pdm_dir = Path(args.pdm_dir) if args.pdm_dir else None
    if pdm_dir is not None:
        pdm_dir.mkdir(parents=True, exist_ok=True)
    failed, used = 0, set()
    for name in args.images:
        path = Path(name)
        try:
            image = load_image(path)
            out = pipe([image], tile_size=args.tile, output_overlays=pdm_dir is not None, cmap=args.cmap)
        except (ImageInputError, ValueError, OSError) as e:
            msg = str(e).replace("\n", " ")
            print(f"finpercep: {msg if name in msg else f'{name}: {msg}'}", file=sys.stderr)
            failed += 1
            continue
        pdm = out.pdms[0]
        stats = summary(pdm)
        record = {"image": str(path), "score": float(out.scores[0]), "pdm_mean": stats["mean"],
                  "pdm_max": stats["max"], "pdm_npy": None, "overlay_png": None}
        if pdm_dir is not None:
            stem = _unique_stem(path, used)
            npy, png = pdm_dir / f"{stem}.pdm.npy", pdm_dir / f"{stem}.overlay.png"
            np.save(npy, pdm.astype(np.float32))
            out.overlays[0].save(png)
            record.update(pdm_npy=str(npy), overlay_png=str(png))
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


def view_command(args: argparse.Namespace) -> int:
    repo_root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo_root))
    try:
        from demo.app import main as demo_main
    except ImportError as e:
        print(f"finpercep view needs the demo extra and a source checkout: pip install -e '.[demo]' ({e})",
              file=sys.stderr)
        return 2
    return int(demo_main(["--host", args.host, "--port", str(args.port)]) or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "score":
        return score_command(args)
    return view_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
