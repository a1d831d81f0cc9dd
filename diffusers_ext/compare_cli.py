"""``finpercep compare``: full-reference metrics of images against a reference (PSNR, SSIM, LPIPS, DISTS).

    finpercep compare IMAGE... --ref REF [--metrics psnr,ssim,lpips_alex,lpips_vgg,dists]
                      [--map-dir DIR] [--resize-ref [auto|bicubic|area]] [--device cpu|cuda] [--cmap inferno]

``--ref`` is one reference for every image, or repeated once per image (paired in order). Each image prints one
JSON object on stdout: ``{"image", "ref", <metric>: value, ..., "lpips_npy", "lpips_png"}``; lower is
better for ``lpips_*`` and ``dists``, higher for ``psnr`` (dB; ``null`` when the image equals the
reference, where PSNR is infinite) and ``ssim``. With ``--map-dir`` the spatial LPIPS (AlexNet) map is
written as ``<stem>.lpips.npy`` (float32 ``H x W``, raw values) and ``<stem>.lpips.png`` (a heat map of
the map clipped to [0, 1] over the image). An image and its reference must have the same size, unless
``--resize-ref`` resizes the reference to the image (``auto``: area averaging when shrinking, bicubic
when enlarging). A file that cannot be compared gets one line on stderr naming it and the reason, the
others are still compared, and the exit code is 1 (2 for bad options or an unreadable single reference).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

DESCRIPTION = ("Full-reference comparison: PSNR, SSIM, LPIPS (AlexNet/VGG16) and DISTS of each image against a "
               "reference, with the published weights; optional spatial LPIPS maps.")
RESIZE_MODES = ("auto", "bicubic", "area")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("images", nargs="+", help="image files to judge (PNG, JPEG, WebP, TIFF, ...)")
    p.add_argument("--ref", action="append", required=True, metavar="REF",
                   help="the reference image (ground truth); repeat it to give one reference per image, in order")
    p.add_argument("--metrics", default="psnr,ssim,lpips_alex,lpips_vgg,dists",
                   help="comma-separated metrics (default: psnr,ssim,lpips_alex,lpips_vgg,dists)")
    p.add_argument("--map-dir", default=None, help="write <stem>.lpips.npy and <stem>.lpips.png (LPIPS AlexNet map) here")
    p.add_argument("--resize-ref", nargs="?", const="auto", default=None, choices=RESIZE_MODES,
                   help="resize the reference to each image's size (auto = area when shrinking, bicubic when "
                        "enlarging; default: sizes must match)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ... (default: cpu)")
    p.add_argument("--cmap", default="inferno", help="heat-map colormap of --map-dir (default: inferno)")
    return p


def register(subparsers: Any) -> None:
    """Add ``compare`` to the ``finpercep`` command line."""
    p = subparsers.add_parser("compare", help="full-reference metrics (PSNR, SSIM, LPIPS, DISTS) against a reference",
                              description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=run)


def resize_reference(ref: Any, size_hw: tuple[int, int], mode: str = "auto") -> Any:
    """``ref`` (a ``1 x 3 x H x W`` tensor in [0, 1]) resized to ``size_hw``: ``area`` averaging,
    ``bicubic`` (antialiased when shrinking), or ``auto`` (area when shrinking both sides, else bicubic)."""
    import torch.nn.functional as F

    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    h, w = int(size_hw[0]), int(size_hw[1])
    if tuple(ref.shape[-2:]) == (h, w):
        return ref
    if mode == "auto":
        mode = "area" if h <= ref.shape[-2] and w <= ref.shape[-1] else "bicubic"
    if mode == "area":
        out = F.interpolate(ref, size=(h, w), mode="area")
    else:
        out = F.interpolate(ref, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0)


def _finite(value: float) -> Optional[float]:
    return float(value) if math.isfinite(value) else None


def unique_stem(path: Path, used: set[str]) -> str:
    """``path``'s stem, made unique among ``used`` (``a``, ``a-2``, ...) and added to it: the output
    file names of ``finpercep score`` and ``finpercep compare``."""
    stem, k = path.stem, 1
    while stem in used:
        k += 1
        stem = f"{path.stem}-{k}"
    used.add(stem)
    return stem


def _error(msg: str, name: Optional[str] = None) -> None:
    msg = msg.replace("\n", " ")
    print(f"finpercep compare: {msg if name is None or name in msg else f'{name}: {msg}'}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .image_io import ImageInputError, load_image, to_batch_tensor
    from .pdm import get_colormap, overlay
    from .perceptual import full_reference_metrics, lpips_maps
    from .perceptual.metrics import _check_metrics
    from .perceptual.weights import MissingWeightsError

    try:
        metrics = _check_metrics(args.metrics)
        get_colormap(args.cmap)
        device = torch.device(args.device)
    except (ValueError, RuntimeError) as e:
        _error(str(e))
        return 2
    if len(args.ref) not in (1, len(args.images)):
        _error(f"{len(args.ref)} references for {len(args.images)} images; pass one --ref for all images "
               "or one --ref per image")
        return 2

    def load_tensor(name: str) -> torch.Tensor:
        return to_batch_tensor(load_image(Path(name)), device=device)[0]

    shared_ref: Optional[torch.Tensor] = None
    if len(args.ref) == 1:
        try:
            shared_ref = load_tensor(args.ref[0])
        except (ImageInputError, OSError) as e:
            _error(f"cannot read the reference: {e}", args.ref[0])
            return 2
    map_dir = Path(args.map_dir) if args.map_dir else None
    if map_dir is not None:
        map_dir.mkdir(parents=True, exist_ok=True)
    failed, used = 0, set()
    for i, name in enumerate(args.images):
        ref_name = args.ref[0] if shared_ref is not None else args.ref[i]
        try:
            image = load_tensor(name)
            ref = shared_ref if shared_ref is not None else load_tensor(ref_name)
            if image.shape != ref.shape:
                if args.resize_ref is None:
                    raise ImageInputError(
                        f"{name} is {image.shape[-1]}x{image.shape[-2]} px but the reference {ref_name} is "
                        f"{ref.shape[-1]}x{ref.shape[-2]} px (width x height); pass --resize-ref to resize the "
                        "reference to the image's size (area when shrinking, bicubic when enlarging; or "
                        "--resize-ref bicubic / area)")
                ref = resize_reference(ref, tuple(image.shape[-2:]), args.resize_ref)
            values = full_reference_metrics(image, ref, metrics=metrics, device=device)
            record: dict[str, Any] = {"image": str(name), "ref": str(ref_name)}
            record.update({m: _finite(values[m][0]) for m in metrics})
            record.update(lpips_npy=None, lpips_png=None)
            if map_dir is not None:
                lmap = lpips_maps(image, ref, net="alex", device=device)[0]
                stem = unique_stem(Path(name), used)
                npy, png = map_dir / f"{stem}.lpips.npy", map_dir / f"{stem}.lpips.png"
                np.save(npy, lmap.astype(np.float32))
                overlay(image[0], np.clip(lmap, 0.0, 1.0), alpha=0.7, cmap=args.cmap).save(png)
                record.update(lpips_npy=str(npy), lpips_png=str(png))
        except MissingWeightsError as e:
            _error(str(e))
            return 2
        except (ImageInputError, ValueError, OSError) as e:
            _error(str(e), name)
            failed += 1
            continue
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


def main(argv: Optional[list[str]] = None) -> int:
    args = add_arguments(argparse.ArgumentParser(prog="finpercep compare", description=DESCRIPTION)).parse_args(argv)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
