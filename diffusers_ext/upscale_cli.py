"""``finpercep upscale``: upscale images (or folders of images) with a feed-forward upscaler.

    finpercep upscale MODEL IMAGE_OR_FOLDER... --out DIR [--device cpu|cuda] [--tile 512] [--overlap 32]
    finpercep upscale MODEL --save-model ComfyUI/models/upscale_models/NAME.safetensors
    python -m diffusers_ext.upscale_cli ...                    # the same, without the ``finpercep`` script

``MODEL`` is one of

* an upscaler ``.safetensors`` file in the layout spandrel (ComfyUI's Load Upscale Model) reads, as
  ``training/ccl_lora.py`` writes next to a feed-forward adapter (``lora/<net>-finpercep.safetensors``),
  or any Real-ESRGAN Compact / RRDBNet safetensors state dict;
* a feed-forward LoRA folder of the trainer (``<output_dir>/lora``): its base network is rebuilt and
  the adapter merged;
* the name of a pretrained network of :mod:`diffusers_ext.srnets` (e.g. ``realesr-animevideov3-x4``).

Each image is written as ``DIR/<stem>.png`` (8-bit RGB; alpha is composed over white as
everywhere in FinPercep) and one JSON line per image goes to stdout: ``{"image", "output", "width",
"height", "scale", "seconds"}``. A file that cannot be read gets one line on stderr naming it and
the reason, the others are still upscaled, and the exit code is 1 (2 when the model cannot be
loaded). ``--save-model`` writes the (merged) network as a spandrel-format file, mode 0644.

Large images go through tiles of ``--tile`` px (0: whole image) with ``--overlap`` px of context on
each side, cropped before pasting, like ComfyUI's own upscale node.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DESCRIPTION = ("Upscale images with a feed-forward upscaler: a spandrel-format .safetensors file (what "
               "training/ccl_lora.py writes for ComfyUI's Load Upscale Model), a trainer LoRA folder, or a "
               "pretrained network name such as realesr-animevideov3-x4.")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("model", help="upscaler .safetensors file, feed-forward LoRA folder of training/ccl_lora.py, or "
                                 "a network name (realesr-animevideov3-x4, realesrgan-x4plus, ...)")
    p.add_argument("images", nargs="*", help="image files and/or folders of images (searched recursively)")
    p.add_argument("--out", default=None, help="folder for the upscaled PNGs (required with images)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ... (default: cpu)")
    p.add_argument("--tile", type=int, default=512, help="tile size in input pixels (0 = whole image; default 512)")
    p.add_argument("--overlap", type=int, default=32, help="context pixels around each tile (default 32)")
    p.add_argument("--save-model", default=None, metavar="FILE.safetensors",
                   help="also write the (merged) network as a spandrel-format file for ComfyUI's models/upscale_models/")
    return p


def build_parser(prog: str = "finpercep upscale") -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))


def register(subparsers: Any) -> None:
    """Add ``upscale`` to the ``finpercep`` command line (a ``finpercep.commands`` entry point)."""
    p = subparsers.add_parser("upscale", help="upscale images with a feed-forward upscaler (ComfyUI/spandrel format)",
                              description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------ library


def load_model(model: str, device: str = "cpu"):
    """``(net, label)`` for a MODEL argument (see the module docstring); LoRA merged, eval mode."""
    import torch

    from .srnets.export import UpscalerFormatError, load_upscaler, merged_network

    p = Path(model).expanduser()
    if p.is_file():
        return load_upscaler(p, device), p.name
    if p.is_dir():
        from safetensors import safe_open

        from .policies import LORA_WEIGHT_NAME, FeedForwardSRPolicy

        f = p / LORA_WEIGHT_NAME
        if not f.is_file():
            raise UpscalerFormatError(f"{p} is a folder without {LORA_WEIGHT_NAME}: pass an upscaler .safetensors "
                                      f"file or a feed-forward LoRA folder of training/ccl_lora.py")
        with safe_open(str(f), "pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("finpercep_policy") != "feedforward" or not meta.get("srnet"):
            raise UpscalerFormatError(f"{f} is not a feed-forward adapter (policy {meta.get('finpercep_policy')!r}); "
                                      f"diffusion adapters need their SD checkpoint: use OneStepSRPipeline or ComfyUI")
        policy = FeedForwardSRPolicy.from_pretrained(meta["srnet"]).load_lora(p)
        return merged_network(policy).to(torch.device(device)), f"{meta['srnet']}+{p.name}"
    from .srnets import available_models, load_srnet

    if model in available_models():
        return load_srnet(model, device=device), model
    raise FileNotFoundError(f"upscaler {model!r} is not a file, a LoRA folder or one of the networks "
                            f"{', '.join(available_models())}")


def _starts(n: int, tile: int) -> list[int]:
    if n <= tile:
        return [0]
    count = -(-n // tile)
    return [min(i * tile, n - tile) for i in range(count)]


def upscale_tensor(net, x, tile: int = 512, overlap: int = 32):
    """``net(x)`` for a ``1 x 3 x H x W`` tensor in [0, 1], tile by tile when larger than ``tile``
    (each tile run with ``overlap`` px of context, which is cropped off); clamped to [0, 1]."""
    import torch

    _, _, h, w = x.shape
    if not tile or (h <= tile and w <= tile):
        return net(x).clamp(0, 1)
    s = int(net.scale)
    out = torch.zeros(1, 3, h * s, w * s, dtype=x.dtype, device=x.device)
    for y0 in _starts(h, tile):
        for x0 in _starts(w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            cy0, cx0 = max(0, y0 - overlap), max(0, x0 - overlap)
            cy1, cx1 = min(h, y1 + overlap), min(w, x1 + overlap)
            sr = net(x[:, :, cy0:cy1, cx0:cx1])
            oy, ox = (y0 - cy0) * s, (x0 - cx0) * s
            out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = sr[:, :, oy:oy + (y1 - y0) * s, ox:ox + (x1 - x0) * s]
    return out.clamp(0, 1)


def collect(paths: Sequence[str]) -> list[Path]:
    out, seen = [], set()
    for name in paths:
        p = Path(name)
        found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
        for q in found:
            key = str(q.resolve())
            if key not in seen:
                seen.add(key)
                out.append(q)
    return out


# ------------------------------------------------------------------------------------ command


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from .image_io import ImageInputError, load_image, to_float_rgb
    from .srnets.export import UpscalerFormatError, save_upscaler

    if args.images and not args.out:
        print("finpercep upscale: --out DIR is required with images", file=sys.stderr)
        return 2
    if not args.images and not args.save_model:
        print("finpercep upscale: nothing to do: give images (with --out DIR) and/or --save-model FILE", file=sys.stderr)
        return 2
    if args.tile < 0 or args.overlap < 0:
        print("finpercep upscale: --tile and --overlap must be >= 0", file=sys.stderr)
        return 2
    try:
        net, label = load_model(args.model, args.device)
    except (UpscalerFormatError, FileNotFoundError, ValueError, OSError) as e:
        print(f"finpercep upscale: cannot load upscaler {args.model}: {e}", file=sys.stderr)
        return 2
    if args.save_model:
        try:
            path = save_upscaler(net.cpu(), args.save_model, {"finpercep_source": label})
        except UpscalerFormatError as e:
            print(f"finpercep upscale: --save-model: {e}", file=sys.stderr)
            return 2
        net.to(torch.device(args.device))
        print(json.dumps({"saved_model": str(path), "source": label, "scale": int(net.scale)}), flush=True)
    if not args.images:
        return 0
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed, used = 0, set()
    dtype = next(net.parameters()).dtype
    for path in collect(args.images):
        t0 = time.perf_counter()
        try:
            rgb = to_float_rgb(load_image(path), str(path))
        except (ImageInputError, OSError, ValueError) as e:
            msg = str(e).replace("\n", " ")
            print(f"finpercep upscale: {msg if str(path) in msg else f'{path}: {msg}'}", file=sys.stderr)
            failed += 1
            continue
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(args.device, dtype)
        with torch.no_grad():
            sr = upscale_tensor(net, x, args.tile, args.overlap)
        arr = np.rint(sr[0].permute(1, 2, 0).float().cpu().numpy() * 255.0).astype(np.uint8)
        stem, k = path.stem, 1
        while stem in used:
            k += 1
            stem = f"{path.stem}-{k}"
        used.add(stem)
        target = out_dir / f"{stem}.png"
        Image.fromarray(arr, mode="RGB").save(target)
        print(json.dumps({"image": str(path), "output": str(target), "width": arr.shape[1], "height": arr.shape[0],
                          "scale": int(net.scale), "seconds": round(time.perf_counter() - t0, 3)}), flush=True)
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(build_parser("python -m diffusers_ext.upscale_cli").parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
