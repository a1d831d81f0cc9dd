"""Reward-model trainer throughput: triplets per second of ``training/train_reward.py`` and where the
time goes (data, robustness inputs, forward, backward, optimizer), per configuration.

    python -m benchmarks.bench_train_reward --data data/fgr_v4 [--steps 12] [--out benchmarks/results]

Each configuration is a short real run of ``train_reward.main`` (the first ``--warmup`` steps are not
timed: a second run resumes from their checkpoint) with the v5 recipe's settings of one stage
(``training/train_default.py``: batch 8, 128 px crops, consistency 0.1, garbage negatives) and the
options that change its speed. The timing comes from the trainer's own phase timer (``result.json``'s
``timing``). The report is ``<out>/train_reward.md`` / ``.json``, quoted by BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

from benchmarks.common import machine

#: name -> (stage, extra train_reward flags); the v5 recipe's stages and the fast paths
CONFIGS = {
    "v5 stage 0 (encoder + dense maps)": (0, ["--stage0_dense_weight", "1.0"]),
    "v5 stage 3 (frozen encoder)": (3, []),
    "v5 joint, maps move the encoder": (5, ["--joint", "--joint_encoder", "maps"]),
}
RECIPE = ["--batch_size", "8", "--crop", "128", "--lambda_consistency", "0.1", "--report_to", "none",
          "--validation_steps", "100000", "--checkpointing_steps", "100000"]


def run_config(data: Path, stage: int, flags: list[str], steps: int, warmup: int, init: Optional[str],
               work: Path, extra: list[str]) -> dict:
    """Timing of ``steps`` steps after ``warmup`` untimed ones (a resumed second run)."""
    from training import train_reward

    out = work / f"s{stage}"
    shutil.rmtree(out, ignore_errors=True)
    base = ["--data", str(data), "--stage", str(stage), "--output_dir", str(out), *RECIPE, *flags, *extra]
    if stage > 0:
        base += ["--init", init]
    train_reward.main(base + ["--max_steps", str(warmup), "--checkpointing_steps", str(warmup)])
    shutil.rmtree(out / "model", ignore_errors=True)
    (out / "result.json").unlink()
    res = train_reward.main(base + ["--max_steps", str(warmup + steps), "--resume_from_checkpoint", "latest",
                                    "--checkpointing_steps", "100000"])
    return res["timing"]


def recipe_table(report: dict) -> str:
    """Seconds of ``training/train_default.py``'s whole curriculum per variant, estimated from its rows:
    its stage-0 steps at the stage-0 row's s/step, stages 1..N at the stage-3 row's (each trains one
    decoder level on a frozen encoder), the joint steps at the joint row's; the speed-up is against the
    report's first variant."""
    from training.train_default import parse_args as default_args

    d = default_args([])
    steps = [int(n) for n in d.steps.split(",")]
    names = list(CONFIGS)
    lines = ["| variant | whole curriculum (s, estimated) | speed-up |", "|---|---|---|"]
    base = None
    for label, rep in report.items():
        rows = rep["rows"]
        if not all(n in rows for n in names):
            continue
        total = (steps[0] * rows[names[0]]["s_per_step"] + sum(steps[1:]) * rows[names[1]]["s_per_step"]
                 + d.joint_steps * rows[names[2]]["s_per_step"])
        base = base or total
        lines.append(f"| {label} | {total:.0f} | {base / total:.2f}x |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="an FGR folder (training/data/build_fgr.py)")
    ap.add_argument("--init", default=None, help="a trained model for stages >= 1 (default: the bundled one)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated configuration names (default: all)")
    ap.add_argument("--extra", default="", help="more train_reward flags for every configuration (one string)")
    ap.add_argument("--label", default="default", help="name of this variant in the report")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    from diffusers_ext.hub import DEFAULT_MODEL_DIR

    init = args.init or str(DEFAULT_MODEL_DIR)
    names = args.only.split(",") if args.only else list(CONFIGS)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            stage, flags = CONFIGS[name]
            rows[name] = run_config(args.data, stage, flags, args.steps, args.warmup, init, Path(tmp),
                                    args.extra.split())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "train_reward.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report[args.label] = {"machine": machine(torch.device("cpu")), "extra": args.extra, "rows": rows}
    path.write_text(json.dumps(report, indent=2))
    text = render(report)
    (args.out / "train_reward.md").write_text(text)
    print(text)
    return 0


def render(report: dict) -> str:
    """The report as Markdown: one row per variant and configuration, then the curriculum estimate."""
    lines = ["| variant | configuration | triplets/s | s/step | data | robustness inputs | forward | backward | optimizer |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, rep in report.items():
        for name, t in rep["rows"].items():
            lines.append(f"| {label} | {name} | {t['triplets_per_s']:.2f} | {t['s_per_step']:.3f} | "
                         + " | ".join(f"{t.get(k + '_s_per_step', 0):.3f}" for k in
                                      ("data", "robustness_inputs", "forward", "backward", "optimizer")) + " |")
    return "\n".join(lines + ["", recipe_table(report)]) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
