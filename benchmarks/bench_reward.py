"""Reward-model cost on this machine, side by side with a global IQA of the paper's kind.

    python benchmarks/bench_reward.py [--sizes 256,512,1024] [--repeats 5] [--out BENCHMARKS_reward.md]

Measures, in one process and one run (our machines are noisy: medians, and ratios against the
peer measured right beside each row):
- images/s of the bundled FinPercep-RM at stage 0 (global only) and stage 5 (score + full map),
  against a CLIP ResNet-50 image tower of CLIP-IQA's shape (random init: cost only);
- FLOPs per image (``torch.utils.flop_counter``) and achieved GFLOP/s against this machine's
  measured float32 matmul peak;
- a 4096 x 4096 photo through the tiled pipeline in a fresh subprocess: wall time and peak RSS.
Prints a markdown report (and writes it with ``--out``).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffusers_ext.backbones.clip_resnet import ClipResNetBackbone  # noqa: E402
from diffusers_ext.models.finpercep_rm import FinPercepRM  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    s = median_seconds(lambda: a @ b, repeats)
    return 2 * n**3 / s / 1e9


class ClipIQAGlobal(torch.nn.Module):
    """CLIP RN50 image tower + a global pooled linear head: the cost shape of CLIP-IQA."""

    def __init__(self) -> None:
        super().__init__()
        self.tower = ClipResNetBackbone()
        self.head = torch.nn.Linear(2048, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(x)[-1].mean((2, 3)))


TILED_SCRIPT = r"""
import json, resource, sys, time, numpy as np
sys.path.insert(0, sys.argv[1])
from diffusers_ext import FinPercepRewardPipeline
pipe = FinPercepRewardPipeline.from_pretrained(); pipe.set_progress_bar_config(disable=True)
rng = np.random.default_rng(0)
img = np.repeat(np.repeat(rng.random((512, 512, 3), dtype=np.float32), 8, 0), 8, 1)
t = time.perf_counter(); out = pipe(img, output_overlays=False); dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "shape": list(out.pdms.shape)}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max_pixels_batch", type=int, default=8 * 512 * 512, help="skip larger batch x size")
    ap.add_argument("--skip_tiled", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    rm = FinPercepRM.from_pretrained(str(ROOT / "diffusers_ext" / "default")).eval()
    peer = ClipIQAGlobal().eval()
    peak = matmul_peak()
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}; float32 matmul peak measured here: {peak:.1f} GFLOP/s.",
        "",
        "| size | batch | model | images/s | ms/image | GFLOP/image | GFLOP/s | cost vs CLIP-RN50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in [int(s) for s in args.sizes.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            if batch * size * size > args.max_pixels_batch and batch > 1:
                continue
            x = torch.rand(batch, 3, size, size)
            with torch.inference_mode():
                runs = {
                    "CLIP-RN50 global (peer)": lambda: peer(x),
                    "FinPercep-RM stage 0 (global)": lambda: rm(x, stage=0),
                    "FinPercep-RM stage 5 (score + map)": lambda: rm(x, stage=5),
                }
                secs = {k: median_seconds(f, args.repeats) for k, f in runs.items()}
            fl = {k: flops(f) / batch / 1e9 for k, f in runs.items()}
            base = secs["CLIP-RN50 global (peer)"]
            for k, s in secs.items():
                lines.append(f"| {size} | {batch} | {k} | {batch / s:.2f} | {1000 * s / batch:.0f} | {fl[k]:.2f} | "
                             f"{fl[k] * batch / s:.1f} | {s / base:.2f}x |")
            print(lines[-1], file=sys.stderr)
    if not args.skip_tiled:
        proc = subprocess.run([sys.executable, "-c", TILED_SCRIPT, str(ROOT)], capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        lines += ["", f"4096 x 4096 photo through the tiled pipeline (tiles of 768, overlap 64, stage 5): "
                      f"{r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB (whole process, model included)."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
