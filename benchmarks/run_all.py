"""Run every benchmark in one go and collect the reports:

    python -m benchmarks.run_all                     # CPU, writes benchmarks/results/*.md and *.json
    python -m benchmarks.run_all --device cuda       # the GPU tables (bf16/fp16, 512 px, batch 1/8/32)
    python -m benchmarks.run_all --only reward,fastpath

Each benchmark runs in its own process (so one's memory does not count against the next) and its
markdown report goes to ``--out/<name>.md`` (raw rows: ``<name>.json``). The reports are what
BENCHMARKS.md quotes.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
STDOUT_REPORT = {"gpu_refl_step.py", "load_viewer.py"}  # these print their report instead of taking --out

CPU = {
    "reward": ["bench_reward.py"],
    "fastpath": ["bench_fastpath.py"],
    "refl_step": ["bench_refl_step.py"],
    "viewer_load": ["load_viewer.py"],
}
CUDA = {
    "reward": ["bench_reward.py", "--device", "cuda", "--dtype", "bf16", "--sizes", "512", "--batches", "1,8,32"],
    "reward_fp16": ["bench_reward.py", "--device", "cuda", "--dtype", "fp16", "--sizes", "512",
                    "--batches", "1,8,32"],
    "fastpath": ["bench_fastpath.py", "--device", "cuda", "--batches", "1,8,32"],
    "refl_step": ["bench_refl_step.py", "--device", "cuda", "--dtype", "bf16", "--size", "512", "--batch", "1"],
    "gpu_refl_step": ["gpu_refl_step.py"],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(sorted({*CPU, *CUDA})))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    table = CUDA if args.device == "cuda" else CPU
    names = [n for n in args.only.split(",") if n] or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) for {args.device}: {', '.join(unknown)}; choose from {', '.join(table)}")
    suffix = "_cuda" if args.device == "cuda" else ""
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        script, *extra = table[name]
        out = args.out / f"{name}{suffix}"
        json_flag = ["--json", str(out.with_suffix(".json"))]
        cmd = [sys.executable, "-m", f"benchmarks.{Path(script).stem}", *extra, *json_flag]
        if script not in STDOUT_REPORT:
            cmd += ["--out", str(out.with_suffix(".md"))]
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        if script in STDOUT_REPORT:
            out.with_suffix(".md").write_text(proc.stdout)
        print(f"== {name}: exit {proc.returncode} after {time.time() - t:.0f} s", file=sys.stderr, flush=True)
        if proc.returncode:
            failed.append(name)
    for name in names:
        md = args.out / f"{name}{suffix}.md"
        if md.is_file():
            print(f"\n## {name}\n\n{md.read_text()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
