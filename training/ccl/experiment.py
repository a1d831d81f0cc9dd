"""The three-arm experiment of issue 3 §4, one command, on the CPU:

    python -m training.ccl.experiment --out runs/ccl_experiment          # bundled reward model

Arms (same policy, data, budget, optimizer; only the reward schedule differs):
  global  the global reward only (RM_0, λ2 = 0) for all steps
  full    the full fine-grained reward (RM_N, λ2 = 1) from the first step, no curriculum
  ccl     CCL: RM_0 for a quarter of the steps, then RM_ceil(N/2) (λ2 .5), RM_N-1 (λ2 .75), RM_N (λ2 1)
Policy: a real pretrained Real-ESRGAN-family network (default realesr-animevideov3-x4), LoRA on its
convolutions. Afterwards every arm (and the untouched base network) is scored on fixed crops of the
*test* photos (never trained on): the final reward, the stage-0 score, PSNR/SSIM to HR, BRISQUE, and
the share of pixels a judge reward model flags. Writes ``results.json``, ``results.md``,
``examples.png`` and each arm's ``monitor.png`` under ``--out``. Rerunning resumes unfinished arms.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


def schedules(n: int, steps: int) -> dict[str, dict]:
    q = max(1, steps // 4)
    return {
        "global": {"stages": [{"name": "global", "rm_stage": 0, "lambda_global": 1.0, "lambda_pdm": 0.0}]},
        "full": {"stages": [{"name": "full", "rm_stage": n, "lambda_global": 1.0, "lambda_pdm": 1.0}]},
        "ccl": {"stages": [
            {"name": "global", "rm_stage": 0, "lambda_global": 1.0, "lambda_pdm": 0.0, "steps": q},
            {"name": "coarse", "rm_stage": max(1, math.ceil(n / 2)), "lambda_global": 1.0, "lambda_pdm": 0.5, "steps": q},
            {"name": "medium", "rm_stage": max(1, n - 1), "lambda_global": 1.0, "lambda_pdm": 0.75, "steps": q},
            {"name": "fine", "rm_stage": n, "lambda_global": 1.0, "lambda_pdm": 1.0}]},
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "ccl_experiment")
    p.add_argument("--reward_model", default=None, help="default: the bundled model")
    p.add_argument("--judge_model", default=None, help="default: the reward model")
    p.add_argument("--judge_stage", type=int, default=None, help="default: the finest stage")
    p.add_argument("--arms", default="global,full,ccl")
    p.add_argument("--net", default="realesr-animevideov3-x4")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--hr_size", type=int, default=128)
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--lora_rank", type=int, default=8)
    p.add_argument("--validation_steps", type=int, default=50)
    p.add_argument("--validation_images", type=int, default=8)
    p.add_argument("--test_images", type=int, default=16)
    p.add_argument("--photo_sources", default="mate,plasma,opencv,skimage")
    p.add_argument("--num_threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def run_arm(arm: str, sched: dict, args: argparse.Namespace) -> float:
    out = args.out / arm
    out.mkdir(parents=True, exist_ok=True)
    if (out / "result.json").is_file() and (out / "lora").is_dir():
        return json.loads((out / "result.json").read_text())["seconds"]
    (out / "schedule.json").write_text(json.dumps(sched, indent=1))
    cmd = [sys.executable, str(ROOT / "training" / "ccl_lora.py"), "--policy", "feedforward",
           "--pretrained_model", args.net, "--ccl_config", str(out / "schedule.json"),
           "--max_train_steps", str(args.steps), "--train_batch_size", str(args.batch), "--hr_size", str(args.hr_size),
           "--learning_rate", str(args.learning_rate), "--lora_rank", str(args.lora_rank),
           "--validation_steps", str(args.validation_steps), "--validation_images", str(args.validation_images),
           "--checkpointing_steps", "50", "--resume_from_checkpoint", "latest", "--photo_sources", args.photo_sources,
           "--seed", str(args.seed), "--num_threads", str(args.num_threads), "--output_dir", str(out)]
    for flag in ("reward_model", "judge_model", "judge_stage"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    t = time.time()
    with open(out / "train.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    return time.time() - t


@torch.no_grad()
def evaluate(args: argparse.Namespace, arms: list[str], n_stages: int) -> dict:
    from diffusers_ext.policies import FeedForwardSRPolicy
    from diffusers_ext.rewards import RewardConfig
    from training.ccl.data import SRPairSampler, load_photos
    from training.ccl_lora import load_reward_model
    from training.ccl.monitor import Monitor

    dev = torch.device("cpu")
    rm = load_reward_model(args.reward_model, dev)
    judge = rm if args.judge_model is None else load_reward_model(args.judge_model, dev)
    jstage = judge.num_stages if args.judge_stage is None else args.judge_stage
    sources = [s for s in args.photo_sources.split(",") if s]
    photos = load_photos("test", sources, min_side=args.hr_size)
    base = FeedForwardSRPolicy.from_pretrained(args.net).eval()
    lr, hr = SRPairSampler(photos, args.hr_size, base.scale, "mix", seed=args.seed + 99).fixed_batch(args.test_images)
    final = RewardConfig(lambda_global=1.0, lambda_pdm=1.0)
    mon = Monitor(lr, hr, rm, final, n_stages, judge=judge, judge_stage=jstage)
    rows, images = {}, {}
    for arm in ["base", *arms]:
        policy = base if arm == "base" else FeedForwardSRPolicy.from_pretrained(args.net).load_lora(args.out / arm / "lora").eval()
        sr = mon.sr_images(policy, dev)
        images[arm] = sr
        m = mon.image_metrics(sr, RewardConfig(lambda_global=1.0, lambda_pdm=0.0), 0)
        rows[arm] = {"reward_final": m["reward_final"], "s_global0": m["s_global0"],
                     "s_globalN": rm(sr, stage=n_stages).score.mean().item(), "psnr": m["psnr"], "ssim": m["ssim"],
                     "brisque": m["brisque"], "judge_flagged": m.get("judge_flagged", float("nan")),
                     "judge_score": m["judge_score"]}
    hr_terms = mon.image_metrics(hr, RewardConfig(), 0)
    rows["hr (reference)"] = {"reward_final": hr_terms["reward_final"], "s_global0": hr_terms["s_global0"],
                              "s_globalN": rm(hr, stage=n_stages).score.mean().item(), "psnr": float("inf"), "ssim": 1.0,
                              "brisque": hr_terms["brisque"], "judge_flagged": hr_terms.get("judge_flagged", float("nan")),
                              "judge_score": hr_terms["judge_score"]}
    save_examples(lr, hr, images, args.out / "examples.png", base.scale)
    return {"rows": rows, "test_images": len(lr), "judge_stage": jstage, "n_stages": n_stages,
            "test_photos": sorted({p.id for p in photos})}


def save_examples(lr, hr, images: dict, path: Path, scale: int, n: int = 4) -> None:
    from PIL import Image, ImageDraw

    cols = ["LR (nearest)", *images, "HR"]
    side = hr.shape[-1]
    sheet = Image.new("RGB", (len(cols) * side, 16 + min(n, len(lr)) * side), "white")
    d = ImageDraw.Draw(sheet)
    for c, name in enumerate(cols):
        d.text((c * side + 3, 2), name, fill="black")
    for r in range(min(n, len(lr))):
        tiles = [torch.nn.functional.interpolate(lr[r:r + 1], scale_factor=scale, mode="nearest")[0],
                 *[images[k][r] for k in images], hr[r]]
        for c, t in enumerate(tiles):
            a = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            sheet.paste(Image.fromarray(a), (c * side, 16 + r * side))
    sheet.save(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    sys.path.insert(0, str(ROOT))
    from training.ccl_lora import load_reward_model

    args.out.mkdir(parents=True, exist_ok=True)
    n = load_reward_model(args.reward_model, torch.device("cpu")).num_stages
    arms = [a for a in args.arms.split(",") if a]
    sch = schedules(n, args.steps)
    seconds = {arm: run_arm(arm, sch[arm], args) for arm in arms}
    res = evaluate(args, arms, n)
    res.update({"seconds": seconds, "schedules": {a: sch[a] for a in arms}, "args": {k: str(v) for k, v in vars(args).items()}})
    for arm in arms:
        r = json.loads((args.out / arm / "result.json").read_text())
        res.setdefault("switches", {})[arm] = r["switches"]
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    keys = ["reward_final", "s_global0", "s_globalN", "psnr", "ssim", "brisque", "judge_flagged", "judge_score"]
    lines = ["| arm | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
    for arm, row in res["rows"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return res


if __name__ == "__main__":
    main()
