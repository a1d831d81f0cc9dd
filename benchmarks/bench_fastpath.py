"""Before/after numbers for the reward model's fast-path options, measured side by side.

    python -m benchmarks.bench_fastpath                                  # CPU, fp32 baseline vs the rest
    python -m benchmarks.bench_fastpath --device cuda --batches 1,8,32   # GPU: adds fp16

Variants of the bundled model at its finest stage (score + full map), each against the default
path (eager, float32, channels-last activations, BatchNorm folded into the convolutions, in-place
ReLU6, ``torch.inference_mode``) in one run:
- ``NCHW activations`` / ``BN not folded``: the two optimizations turned off (the code before them),
  alone and together (``model.channels_last = False``, ``model.encoder.fold_bn = False``);
- ``autograd on``: the same forward with gradients recorded (what ``inference_mode`` saves);
- ``bf16`` / ``fp16``: weights and input in half precision (fp16 on CUDA only);
- ``torch.compile``: default mode, compile time reported separately.
Each variant's score and map are compared with the baseline's (max abs difference), so a faster
variant that changes the answer shows it. Prints a markdown table; ``--out`` / ``--json`` write it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import pick_device, write_report, PeakMemory, machine, median_seconds, sync
from diffusers_ext.hub import resolve_model_dir
from diffusers_ext.models.finpercep_rm import FinPercepRM

ROOT = Path(__file__).resolve().parent.parent


def variants(device: torch.device, compile_: bool) -> dict[str, dict]:
    v = {"default (channels-last activations, BN folded, inference_mode, fp32)": {},
         "NCHW activations (before)": {"nchw": True},
         "BN not folded (before)": {"unfold": True},
         "NCHW + BN not folded (before both)": {"nchw": True, "unfold": True},
         "autograd on (no inference_mode)": {"grad": True},
         "bf16 weights + input": {"dtype": torch.bfloat16}}
    if device.type == "cuda":
        v["fp16 weights + input"] = {"dtype": torch.float16}
    if compile_:
        v["torch.compile"] = {"compile": True}
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=None, help="reward model folder or Hub id (default: the bundled model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no_compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    base_model = FinPercepRM.from_pretrained(str(resolve_model_dir(args.model))).eval().to(device)
    stage = base_model.num_stages
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        x0 = torch.rand(batch, 3, args.size, args.size, device=device, generator=torch.Generator(device).manual_seed(0))
        ref = None
        for name, v in variants(device, not args.no_compile).items():
            model = copy.deepcopy(base_model)
            x = x0
            dtype = v.get("dtype", torch.float32)
            model.to(dtype)
            x = x.to(dtype)
            if v.get("unfold") and hasattr(model.encoder, "fold_bn"):
                model.encoder.fold_bn = False
            if v.get("nchw"):
                model.channels_last = False
            fwd = (lambda m: (lambda t: m(t, stage=stage, return_dict=False)))(model)
            compile_s = float("nan")
            if v.get("compile"):
                fwd = torch.compile(fwd)
                t = time.perf_counter()
                with torch.inference_mode():
                    fwd(x)
                sync(device)
                compile_s = time.perf_counter() - t
            ctx = torch.enable_grad if v.get("grad") else torch.inference_mode
            with ctx():
                with PeakMemory(device) as pm:
                    score, pdm = fwd(x)
                s = median_seconds(lambda: fwd(x), args.repeats, device, warmup=0)
            score, pdm = score.detach().float(), pdm.detach().float()
            if ref is None:  # the first variant of each batch size is the baseline
                ref = (score, pdm, s)
            rows.append({"batch": batch, "variant": name, "seconds": s, "images_per_s": batch / s, "peak_mb": pm.mb,
                         "compile_s": compile_s, "score_diff": (score - ref[0]).abs().max().item(),
                         "map_diff": (pdm - ref[1]).abs().max().item(), "speedup": ref[2] / s})
            print(f"b{batch} {name}: {batch / s:.2f} img/s ({rows[-1]['speedup']:.2f}x), peak {pm.mb:.0f} MB",
                  file=sys.stderr)
            del model
            with contextlib.suppress(Exception):
                torch._dynamo.reset()
    lines = [f"Machine: {machine(device)}. Bundled model, stage {stage}, {args.size} x {args.size} px; median of "
             f"{args.repeats} timed runs after a warm-up.", "",
             "| batch | variant | images/s | speed vs baseline | peak memory (MB) | compile (s) | max |Δscore| | max |Δmap| |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        comp = "" if r["compile_s"] != r["compile_s"] else f"{r['compile_s']:.0f}"
        lines.append(f"| {r['batch']} | {r['variant']} | {r['images_per_s']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['peak_mb']:.0f} | {comp} | {r['score_diff']:.1e} | {r['map_diff']:.1e} |")
    write_report("\n".join(lines) + "\n", args.out, args.json, {"machine": machine(device), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
