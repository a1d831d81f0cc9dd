"""The ``finpercep`` command line.

    finpercep score IMAGE... [--model PATH|HUB_ID] [--pdm-dir DIR] [--device cpu|cuda] [--stage K]
                    [--tile N] [--tile-overlap N]        (each option also takes "default")
    finpercep compare IMAGE... --ref REF [--metrics psnr,ssim,lpips_alex,lpips_vgg,dists] [--map-dir DIR]
                      [--resize-ref [auto|bicubic|area]] [--device cpu|cuda]   (diffusers_ext/compare_cli.py)
    finpercep view [--host 127.0.0.1] [--port 7860] [--model ...] ...   (from the demo package)

``score`` prints one JSON object per image on stdout (``score``: the calibrated score in (0, 1) of a
calibrated model, clean photos near 0.9; ``raw_score``: the unbounded head output); a file that cannot be scored gets a one-line
error on stderr naming the file and the reason, the others are still scored, and the exit code is
1 when any failed (0 otherwise).

Other packages add sub-commands through the ``finpercep.commands`` entry-point group: each entry
point is a function ``register(subparsers)`` that adds its parser and sets ``func`` (a function of
the parsed arguments returning the exit code). The viewer's ``view`` comes this way from
``demo.cli``: the core library never imports a front end.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .compare_cli import register as register_compare
from .compare_cli import unique_stem as _unique_stem

COMMANDS_GROUP = "finpercep.commands"
#: ``finpercep score``'s flag of each request option (error messages name the flag the user typed).
_FLAGS = {"stage": "--stage", "tile_size": "--tile", "tile_overlap": "--tile-overlap"}


def _plugin_commands() -> dict[str, list]:
    """Name -> the ``finpercep.commands`` entry points of that name, in ``sys.path`` order. Read from
    every installed distribution: a stale metadata folder (say an old ``*.egg-info`` in the working
    directory) must not hide the commands of the real install."""
    from importlib.metadata import distributions

    found: dict[str, list] = {}
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == COMMANDS_GROUP and ep.name != "score" and ep.value not in {e.value for e in found.get(ep.name, [])}:
                found.setdefault(ep.name, []).append(ep)
    return dict(sorted(found.items()))


def _broken_command(name: str, error: Exception):
    def run(args: argparse.Namespace) -> int:
        print(f"finpercep {name}: this command's package failed to load: {error.__class__.__name__}: {error}",
              file=sys.stderr)
        return 2

    return run


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finpercep", description="FinPercep-RM: score images and map their defects.")
    sub = parser.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", help="global score + Perceptual Degradation Map of images")
    sc.add_argument("images", nargs="+", help="image files (PNG, JPEG, WebP, TIFF, ...)")
    sc.add_argument("--model", default=None, help="reward model folder or Hub id (default: the bundled model)")
    sc.add_argument("--pdm-dir", default=None, help="write <stem>.pdm.npy and <stem>.overlay.png here")
    sc.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ... (default: cpu)")
    sc.add_argument("--stage", default="default", help="curriculum stage, 0 = global only (default: the model's)")
    sc.add_argument("--tile", default="default",
                    help="tile side in px for large images, 0 = never tile (default: the model's native size)")
    sc.add_argument("--tile-overlap", default="default", help="tile overlap in px (default: a sixth of the tile)")
    sc.add_argument("--cmap", default="inferno", help="overlay colormap (default: inferno)")
    sc.set_defaults(func=score_command)
    register_compare(sub)
    for name, candidates in _plugin_commands().items():
        error: Optional[Exception] = None
        for ep in candidates:
            try:
                register = ep.load()
            except Exception as e:  # a broken add-on must not take `finpercep score` down with it
                error = error or e
                continue
            register(sub)
            break
        else:
            bad = sub.add_parser(name, help=f"(failed to load: {error.__class__.__name__})", add_help=False)
            bad.add_argument("rest", nargs=argparse.REMAINDER)
            bad.set_defaults(func=_broken_command(name, error))
    return parser


def score_command(args: argparse.Namespace) -> int:
    import torch

    from .image_io import ImageInputError, load_image
    from .pipelines.pipeline_finpercep_reward import FinPercepRewardPipeline
    from .request import RequestError, ScoreRequest, resolve, score_record

    try:
        pipe = FinPercepRewardPipeline.from_pretrained(args.model).to(torch.device(args.device))
    except Exception as e:  # one clear line instead of a traceback for a bad --model
        print(f"finpercep: cannot load reward model {args.model or '(bundled default)'}: {e}", file=sys.stderr)
        return 2
    try:
        request = ScoreRequest.parse(args.stage, args.tile, args.tile_overlap)
        resolve(pipe.reward_model, request)  # bad options fail once, before any image
    except RequestError as e:
        print(f"finpercep: {_FLAGS[e.option]}: {e}", file=sys.stderr)
        return 2
    model = pipe.reward_model
    pdm_dir = Path(args.pdm_dir) if args.pdm_dir else None
    if pdm_dir is not None:
        pdm_dir.mkdir(parents=True, exist_ok=True)
    failed, used = 0, set()
    for name in args.images:
        path = Path(name)
        try:
            image = load_image(path)
            out = pipe([image], stage=request.stage, tile_size=request.tile_size, tile_overlap=request.tile_overlap,
                       output_overlays=pdm_dir is not None, cmap=args.cmap)
        except (ImageInputError, ValueError, OSError) as e:
            msg = str(e).replace("\n", " ")
            print(f"finpercep: {msg if name in msg else f'{name}: {msg}'}", file=sys.stderr)
            failed += 1
            continue
        pdm = out.pdms[0]
        record = score_record(str(path), out.scores[0], out.raw_scores[0], pdm, out.stage, model.num_stages,
                              out.tiles[0])
        record.update(pdm_npy=None, overlay_png=None)
        if pdm_dir is not None:
            stem = _unique_stem(path, used)
            npy, png = pdm_dir / f"{stem}.pdm.npy", pdm_dir / f"{stem}.overlay.png"
            np.save(npy, pdm.astype(np.float32))
            out.overlays[0].save(png)
            record.update(pdm_npy=str(npy), overlay_png=str(png))
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
