"""Reward-model cost on this machine, side by side with a global IQA of the paper's kind.

    python -m benchmarks.bench_reward                                   # CPU: 256..2048 px, batch 1 and 8
    python -m benchmarks.bench_reward --device cuda --dtype bf16 --sizes 512 --batches 1,8,32   # GPU table

Measures, in one process and one run (our machines are noisy: medians, and ratios against the
peer measured right beside each row):
- images/s and peak memory of the bundled FinPercep-RM at every curriculum stage (stage 0: global
  score only; stages 1..N: score + map of growing resolution), against a CLIP ResNet-50 image tower
  of CLIP-IQA's shape (random init: cost only, no weights needed), on the same inputs;
- FLOPs per image (``torch.utils.flop_counter``) and achieved GFLOP/s against this machine's
  measured matmul peak;
- the finest stage through the default tiling (tiles of the model's ``native_size``), which is what
  the pipeline and the CLI run on images larger than that;
- (CPU) a 4096 x 4096 photo through the tiled pipeline in a fresh subprocess: wall time, peak RSS.
Peak memory per row: CPU, the process's resident-set peak above its level before the row
(``benchmarks/common.py``); CUDA, the allocator's peak above its level before the row.
Prints a markdown report (and writes it with ``--out``; ``--json`` for the raw rows).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import DTYPES, pick_device, write_report, PeakMemory, flops, machine, matmul_peak, median_seconds
from diffusers_ext.backbones.clip_resnet import ClipResNetBackbone
from diffusers_ext.hub import resolve_model_dir
from diffusers_ext.models.finpercep_rm import FinPercepRM
from diffusers_ext.request import default_tiling

ROOT = Path(__file__).resolve().parent.parent

PEER = "CLIP-RN50 global (peer)"


class ClipIQAGlobal(torch.nn.Module):
    """CLIP RN50 image tower + a global pooled linear head: the cost shape of CLIP-IQA."""

    def __init__(self) -> None:
        super().__init__()
        self.tower = ClipResNetBackbone()
        self.head = torch.nn.Linear(2048, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(x)[-1].mean((2, 3)))


TILED_SCRIPT = r"""
import json, sys, time, numpy as np
from benchmarks.common import status_kb
from diffusers_ext import FinPercepRewardPipeline
pipe = FinPercepRewardPipeline.from_pretrained(); pipe.set_progress_bar_config(disable=True)
rng = np.random.default_rng(0)
img = np.repeat(np.repeat(rng.random((512, 512, 3), dtype=np.float32), 8, 0), 8, 1)
t = time.perf_counter(); out = pipe(img, output_overlays=False); dt = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child would report its parent's peak
print(json.dumps({"seconds": dt, "peak_rss_mb": status_kb("VmHWM") / 1024, "shape": list(out.pdms.shape)}))
"""


def stage_name(k: int, n: int) -> str:
    return "FinPercep-RM stage 0 (global)" if k == 0 else f"FinPercep-RM stage {k} (score + map 1/{2 ** (n - k + 1)})"


def tiled_4096() -> dict:
    proc = subprocess.run([sys.executable, "-c", TILED_SCRIPT], capture_output=True, text=True, check=True,
                          cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=None, help="reward model folder or Hub id (default: the bundled model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--sizes", default="256,512,1024,2048")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--stages", default="all", help="comma-separated stages, or 'all'")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row (median), after one warm-up")
    ap.add_argument("--big_pixels", type=int, default=4 * 1024 * 1024,
                    help="rows with more pixels per call than this are timed once (after the warm-up)")
    ap.add_argument("--skip_tiled", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    ap.add_argument("--json", type=Path, default=None, help="write the raw rows here")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype]
    torch.set_grad_enabled(False)
    rm = FinPercepRM.from_pretrained(str(resolve_model_dir(args.model))).eval().to(device, dtype)
    peer = ClipIQAGlobal().eval().to(device, dtype)
    n = rm.num_stages
    stages = list(range(n + 1)) if args.stages == "all" else [int(s) for s in args.stages.split(",")]
    peak = matmul_peak(device, dtype)
    tiling = default_tiling(rm)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        x1 = torch.rand(1, 3, size, size, device=device, dtype=dtype)
        models = {PEER: peer, **{stage_name(k, n): (lambda x, k=k: rm(x, stage=k)) for k in stages}}
        if size > tiling.size:  # what the pipeline and the CLI run by default on an image of this size
            models[f"FinPercep-RM stage {n}, default tiling"] = lambda x: rm(x, stage=n, tiling=tiling)
        with torch.inference_mode():
            gflop = {name: flops(lambda: m(x1)) / 1e9 for name, m in models.items()}
        for batch in [int(b) for b in args.batches.split(",")]:
            x = torch.rand(batch, 3, size, size, device=device, dtype=dtype)
            repeats = 1 if batch * size * size > args.big_pixels else args.repeats
            secs, mem = {}, {}
            with torch.inference_mode():
                for name, m in models.items():
                    try:
                        with PeakMemory(device) as pm:
                            m(x)  # warm-up call, measured for memory
                        mem[name] = pm.mb
                        secs[name] = median_seconds(lambda: m(x), repeats, device, warmup=0)
                    except (torch.OutOfMemoryError, RuntimeError) as exc:  # e.g. CPU allocation failure
                        if "memory" not in str(exc).lower():
                            raise
                        secs[name], mem[name] = float("nan"), float("inf")
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
            for name in models:
                s = secs[name]
                rows.append({"size": size, "batch": batch, "model": name, "seconds": s, "images_per_s": batch / s,
                             "gflop_per_image": gflop[name], "gflops": gflop[name] * batch / s,
                             "peak_mb": mem[name], "cost_vs_peer": s / secs[PEER], "repeats": repeats})
                r = rows[-1]
                print(f"{size} b{batch} {name}: {r['images_per_s']:.2f} img/s, peak {r['peak_mb']:.0f} MB, "
                      f"{r['cost_vs_peer']:.2f}x", file=sys.stderr)
    lines = [f"Machine: {machine(device)}; dtype {args.dtype}; {args.dtype} matmul peak measured here: "
             f"{peak:.1f} GFLOP/s. Median of {args.repeats} timed runs after a warm-up (rows above "
             f"{args.big_pixels / 2**20:.0f} Mpx per call: 1 timed run).", "",
             "| size | batch | model | images/s | ms/image | GFLOP/image | GFLOP/s | peak memory (MB) | cost vs CLIP-RN50 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['batch']} | {r['model']} | {r['images_per_s']:.2f} | "
                     f"{1000 * r['seconds'] / r['batch']:.0f} | {r['gflop_per_image']:.2f} | {r['gflops']:.1f} | "
                     f"{r['peak_mb']:.0f} | {r['cost_vs_peer']:.2f}x |")
    tiled = None
    if not args.skip_tiled and device.type == "cpu":
        tiled = tiled_4096()
        lines += ["", f"4096 x 4096 photo through the tiled pipeline (tiles of {tiling.size}, overlap "
                      f"{tiling.overlap}, stage {n}): {tiled['seconds']:.1f} s, peak RSS "
                      f"{tiled['peak_rss_mb']:.0f} MB (whole process, model included)."]
    write_report("\n".join(lines) + "\n", args.out, args.json, {"machine": machine(device), "matmul_peak_gflops": peak,
                                                                  "rows": rows, "tiled_4096": tiled})
    return 0


if __name__ == "__main__":
    sys.exit(main())
