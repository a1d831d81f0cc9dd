"""The CCL experiment (issue 3 §4, issue 13 §2), one command, on the CPU:

    python -m training.ccl.experiment --out runs/ccl_experiment --seeds 0,1,2   # bundled reward model

Arms (same policy, data, budget, optimizer; only the reward schedule differs):
  global  the global reward only (RM_0, λ2 = 0) for all steps
  full    the full fine-grained reward (RM_N, λ2 = 1) from the first step, no curriculum
  ccl     CCL: RM_0 for a quarter of the steps, then RM_ceil(N/2) (λ2 .5), RM_N-1 (λ2 .75), RM_N (λ2 1)
  coevo   ccl + the co-evolving reward (training/ccl/coevolve.py): every --coevolve_every steps the
          active reward stage learns the policy's own outputs (replay with --coevolve_data)
Policy: a real pretrained Real-ESRGAN-family network (default realesr-animevideov3-x4), LoRA on its
convolutions. Afterwards every arm (and the untouched base network) is scored on fixed crops of the
*test* photos (never trained on): the final reward, the stage-0 score, PSNR/SSIM to HR, BRISQUE (NaN
without Debian opencv-doc's model files), the full-reference perceptual distances to HR with the published
weights (``lpips_alex``, ``lpips_vgg``, ``dists``: :mod:`diffusers_ext.perceptual`; results of older
versions have ``percep`` instead, a home-made EfficientNet-Lite2 distance no longer computed), and
the score and flagged-pixel share of a *judge*: a second reward model of another backbone
(EfficientNet-Lite1) trained on other triplets (7,000 of an FGR build of its own, data seed 1, in
``data/fgr_v4_judge``; the bundled model trains on the seed-0 build) with another seed
(``--judge_model``; shipped in ``training/judge/``, and rebuilt there by :data:`JUDGE_RECIPE` when
missing, see :func:`ensure_judge`). Every arm runs
once per training seed (``--seeds``); the test crops are the same for all seeds. Writes
``results.json``, ``results.md`` (mean and range over seeds; its ``hack`` column is the share of
seeds whose arm is flagged by the hack rule against the base network: ``reward_final`` up by more than
``--hack_reward_margin`` while the ``--hack_metrics`` (LPIPS-VGG and DISTS) are all worse by more than
``--hack_perceptual_margin``, training/ccl/hackflag.py), ``examples.png`` (first seed),
``curves.png`` (validation curves of every arm), ``hacking.md`` (the reward-hacking benchmark,
training/ccl/hacking.py) and each run's ``monitor.png`` under ``--out``. Every arm is scored by the
reward model the runs started from (the co-evolving arm's adapted model is not its own judge).
Rerunning resumes unfinished runs.
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

from training.ccl.coevolve import LABELS as COEVOLVE_LABELS
from training.ccl.coevolve import UPDATES as COEVOLVE_UPDATES
from training.ccl.hackflag import HackRule
from training.ccl.hackflag import add_arguments as add_hack_arguments

ROOT = Path(__file__).resolve().parents[2]
# the independent judge, shipped (training/judge/README.md: its recipe and figures); rebuilt when missing
DEFAULT_JUDGE = ROOT / "training" / "judge"
JUDGE_RUNS = ROOT / "runs" / "judge_v4_lite1"
# the judge recipe: another backbone (Lite1), other triplets (an FGR build of its own, data seed 1: the
# bundled model trains on the seed-0 build), another training seed, no teacher heads (v5's recipe: the
# bundled model's heads learned LPIPS-alex, which would make the judge share its teacher); 7,000 triplets,
# so that building and training it takes about 17 minutes on 2 cores (9 to build, 8 to train)
JUDGE_DATA = ROOT / "data" / "fgr_v4_judge"
JUDGE_RECIPE = ["--seed", "1", "--data_seed", "1", "--sources", "all", "--train_items", "7000",
                "--train_arg=--backbone=efficientnet_lite1", "--steps", "400,80,80,100,120,150", "--joint_steps", "0",
                "--no-teacher_heads"]


def schedules(n: int, steps: int, coevolve: dict | None = None) -> dict[str, dict]:
    """The schedule of every arm for a reward model with stages 0..``n``; ``coevolve`` is the
    co-evolving arm's ``coevolve`` block (that arm is left out without one)."""
    q = max(1, steps // 4)
    out = {
        "global": {"stages": [{"name": "global", "rm_stage": 0, "lambda_global": 1.0, "lambda_pdm": 0.0}]},
        "full": {"stages": [{"name": "full", "rm_stage": n, "lambda_global": 1.0, "lambda_pdm": 1.0}]},
        "ccl": {"stages": [
            {"name": "global", "rm_stage": 0, "lambda_global": 1.0, "lambda_pdm": 0.0, "steps": q},
            {"name": "coarse", "rm_stage": max(1, math.ceil(n / 2)), "lambda_global": 1.0, "lambda_pdm": 0.5, "steps": q},
            {"name": "medium", "rm_stage": max(1, n - 1), "lambda_global": 1.0, "lambda_pdm": 0.75, "steps": q},
            {"name": "fine", "rm_stage": n, "lambda_global": 1.0, "lambda_pdm": 1.0}]},
    }
    if coevolve is not None:
        out["coevo"] = {"stages": out["ccl"]["stages"], "coevolve": dict(coevolve)}
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "ccl_experiment")
    p.add_argument("--reward_model", default=None, help="default: the bundled model")
    p.add_argument("--judge_model", default=str(DEFAULT_JUDGE),
                   help="independent judge reward model; the default one is trained first when missing "
                        "('same' = the reward model itself, not independent)")
    p.add_argument("--judge_stage", type=int, default=None, help="default: the finest stage")
    p.add_argument("--arms", default="global,full,ccl,coevo")
    p.add_argument("--coevolve_data", type=Path, default=ROOT / "data" / "fgr_v4",
                   help="coevo arm: FGR dataset of the replay items and the guard")
    p.add_argument("--coevolve_every", type=int, default=50, help="coevo arm: policy steps between reward updates")
    p.add_argument("--coevolve_update", choices=COEVOLVE_UPDATES, default="heads",
                   help="coevo arm: what an update changes (training/ccl/coevolve.py)")
    p.add_argument("--coevolve_steps", type=int, default=10, help="coevo arm: optimizer steps per reward update")
    p.add_argument("--coevolve_labels", choices=COEVOLVE_LABELS, default="maps",
                   help="coevo arm: 'teacher' adds the full-reference teacher's order of whole versions (HR, "
                        "output, bicubic) to every update (training/ccl/coevolve.py)")
    p.add_argument("--coevolve_memory", type=int, default=0,
                   help="coevo arm: past policy items kept and replayed at every update (0 = only fresh ones)")
    p.add_argument("--net", default="realesr-animevideov3-x4")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--hr_size", type=int, default=128)
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--lora_rank", type=int, default=8)
    p.add_argument("--fidelity", choices=["none", "l1", "mse", "lr"], default="none",
                   help="fidelity term added to the ReFL loss in every arm: l1 / mse against HR, lr = LR "
                        "consistency (no HR; training/ccl/fidelity.py)")
    p.add_argument("--lambda_fidelity", type=float, default=1.0)
    p.add_argument("--lr_consistency_kernel", default="auto", help="--fidelity lr: the SR -> LR kernel (ccl_lora)")
    p.add_argument("--term_norm", choices=["off", "abs", "std"], default="off",
                   help="per-term normalization of the loss terms (ccl_lora --term_norm)")
    add_hack_arguments(p, "the base network's", " (the runs' monitors use the same rule against their step 0)")
    p.add_argument("--validation_steps", type=int, default=50)
    p.add_argument("--validation_images", type=int, default=8)
    p.add_argument("--test_images", type=int, default=16)
    p.add_argument("--photo_sources", default="mate,plasma,opencv,skimage")
    p.add_argument("--num_threads", type=int, default=2)
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated: every arm runs once per seed")
    p.add_argument("--eval_seed", type=int, default=99, help="seed of the fixed test crops")
    args = p.parse_args(argv)
    args.seed_list = [int(x) for x in args.seeds.split(",") if x]
    if args.judge_model == "same":
        args.judge_model = None
    return args


def ensure_judge(args: argparse.Namespace) -> None:
    """Train the default independent judge (:data:`JUDGE_RECIPE`) when its shipped folder is missing."""
    if args.judge_model is None or Path(args.judge_model) != DEFAULT_JUDGE or (DEFAULT_JUDGE / "config.json").is_file():
        return
    cmd = [sys.executable, "-m", "training.train_default", *JUDGE_RECIPE, "--data", str(JUDGE_DATA),
           "--runs", str(JUDGE_RUNS), "--export", str(DEFAULT_JUDGE), "--results", str(JUDGE_RUNS / "results")]
    print(f"training the independent judge into {JUDGE_RUNS}: {' '.join(cmd[1:])}", file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=str(ROOT))


def run_dir(args: argparse.Namespace, arm: str, seed: int) -> Path:
    return args.out / f"seed{seed}" / arm


def run_arm(arm: str, sched: dict, args: argparse.Namespace, seed: int) -> float:
    out = run_dir(args, arm, seed)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "result.json").is_file() and (out / "lora").is_dir():
        return json.loads((out / "result.json").read_text())["seconds"]
    (out / "schedule.json").write_text(json.dumps(sched, indent=1))
    cmd = [sys.executable, "-m", "training.ccl_lora", "--policy", "feedforward",
           "--pretrained_model", args.net, "--ccl_config", str(out / "schedule.json"),
           "--max_train_steps", str(args.steps), "--train_batch_size", str(args.batch), "--hr_size", str(args.hr_size),
           "--learning_rate", str(args.learning_rate), "--lora_rank", str(args.lora_rank),
           "--fidelity", args.fidelity, "--lambda_fidelity", str(args.lambda_fidelity),
           "--lr_consistency_kernel", args.lr_consistency_kernel, "--term_norm", args.term_norm,
           *HackRule.from_args(args).argv(), "--monitor_lpips_vgg",
           "--validation_steps", str(args.validation_steps), "--validation_images", str(args.validation_images),
           "--checkpointing_steps", "50", "--resume_from_checkpoint", "latest", "--photo_sources", args.photo_sources,
           "--seed", str(seed), "--num_threads", str(args.num_threads), "--output_dir", str(out)]
    for flag in ("reward_model", "judge_model", "judge_stage"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    t = time.time()
    with open(out / "train.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    return time.time() - t


@torch.no_grad()
def evaluate(args: argparse.Namespace, arms: list[str], n_stages: int) -> dict[int, dict]:
    """Score every arm of every seed, the untouched base network and HR on the fixed test crops.
    The models, the crops, the base and the HR rows are loaded and computed once for all seeds."""
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
    lr, hr = SRPairSampler(photos, args.hr_size, base.scale, "mix", seed=args.eval_seed).fixed_batch(args.test_images)
    final = RewardConfig(lambda_global=1.0, lambda_pdm=1.0)
    # a pixel is "flagged" when the judge's map there exceeds what it gives 99 % of the HR pixels
    threshold = float(torch.quantile(judge(hr, stage=jstage).pdm.flatten(), 0.99)) if jstage > 0 else 0.5
    mon = Monitor(lr, hr, rm, final, n_stages, judge=judge, judge_stage=jstage, flag_threshold=threshold,
                  lpips_vgg=True)

    def row(images: torch.Tensor) -> dict[str, float]:
        m = mon.image_metrics(images, RewardConfig(lambda_global=1.0, lambda_pdm=0.0), 0)
        return {"reward_final": m["reward_final"], "s_global0": m["s_global0"],
                "s_globalN": rm(images, stage=n_stages).score.mean().item(), "psnr": m["psnr"], "ssim": m["ssim"],
                **{k: m.get(k, float("nan")) for k in ("brisque", "lpips_alex", "lpips_vgg", "dists", "judge_flagged",
                                                       "judge_pdm")},
                "judge_score": m["judge_score"]}

    rule = HackRule.from_args(args)

    def flagged(r: dict[str, float]) -> float:
        """1 when ``r`` is a hack against the base network (:mod:`training.ccl.hackflag`), NaN undecided."""
        flag = rule.check(base_row, r)
        return float("nan") if flag is None else float(flag)

    base_sr = mon.sr_images(base, dev)
    base_row = row(base_sr)
    base_row["hack"] = 0.0
    hr_row = {**row(hr), "psnr": float("inf"), "ssim": 1.0}  # its lpips_* and dists are 0 by definition
    hr_row["hack"] = flagged(hr_row)
    meta = {"test_images": len(lr), "judge_stage": jstage, "flag_threshold": threshold, "n_stages": n_stages,
            "test_photos": sorted({p.id for p in photos})}
    per_seed = {}
    for i, seed in enumerate(args.seed_list):
        rows, images = {"base": base_row}, {"base": base_sr}
        for arm in arms:
            policy = FeedForwardSRPolicy.from_pretrained(args.net).load_lora(run_dir(args, arm, seed) / "lora").eval()
            images[arm] = mon.sr_images(policy, dev)
            rows[arm] = row(images[arm])
            rows[arm]["hack"] = flagged(rows[arm])
        rows["hr (reference)"] = hr_row
        if i == 0:
            save_examples(lr, hr, images, args.out / "examples.png", base.scale)
        per_seed[seed] = {"rows": rows, **meta}
    return per_seed


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


#: ``hack``: the hack flag against the base network (training/ccl/hackflag.py); its mean over seeds is
#: the share of seeds flagged.
KEYS = ["reward_final", "s_global0", "s_globalN", "psnr", "ssim", "brisque", "lpips_alex", "lpips_vgg", "dists",
        "judge_score", "judge_pdm", "judge_flagged", "hack"]


def aggregate(per_seed: dict[int, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, min and max over seeds of every metric of every arm."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    first = next(iter(per_seed.values()))["rows"]
    for arm in first:
        out[arm] = {}
        for k in KEYS:
            vals = [float(r["rows"][arm][k]) for r in per_seed.values()]
            out[arm][k] = {"mean": float(np.mean(vals)), "min": min(vals), "max": max(vals)}
    return out


def format_results(agg: dict, n_seeds: int) -> str:
    lines = ["| arm | " + " | ".join(KEYS) + " |", "| --- |" + " --- |" * len(KEYS)]
    for arm, row in agg.items():
        cells = []
        for k in KEYS:
            m = row[k]
            cells.append(f"{m['mean']:.4f}" + (f" ({m['min']:.3f}..{m['max']:.3f})"
                                               if n_seeds > 1 and m["max"] > m["min"] else ""))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_arm_curves(args: argparse.Namespace, arms: list[str], path: Path) -> None:
    """Validation curves of every arm and seed in one PNG, from their ``monitor.jsonl``."""
    from training.ccl.monitor import plot_curves

    base = {"global": (31, 119, 180), "full": (214, 39, 40), "ccl": (44, 160, 44), "coevo": (148, 103, 189)}
    runs, colors = {}, {}
    for arm in arms:
        for i, seed in enumerate(args.seed_list):
            log = run_dir(args, arm, seed) / "monitor.jsonl"
            if log.is_file():
                label = f"{arm} seed {seed}"
                runs[label] = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
                fade = min(0.6, 0.3 * i)  # later seeds: lighter shades of the arm's colour
                colors[label] = tuple(int(c + (255 - c) * fade) for c in base.get(arm, (90, 90, 90)))
    every = [h for hist in runs.values() for h in hist]
    keys = [k for k in ("reward_final", "psnr", "ssim", "brisque", "percep", "lpips_alex", "lpips_vgg", "dists",
                        "judge_score", "judge_pdm", "hack")
            if any(k in h for h in every)]  # percep: runs of older versions
    plot_curves([], path, keys=keys or None,
                runs=runs,
                colors=colors,
                title=f"validation curves of every arm (judge: {'independent model' if args.judge_model else 'same model'}"
                      "; lower is better for brisque, lpips, dists and judge_pdm)")


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    from training.ccl_lora import load_reward_model

    args.out.mkdir(parents=True, exist_ok=True)
    ensure_judge(args)
    n = load_reward_model(args.reward_model, torch.device("cpu")).num_stages
    arms = [a for a in args.arms.split(",") if a]
    coevolve = ({"data": str(args.coevolve_data), "every": args.coevolve_every, "update": args.coevolve_update,
                 "steps": args.coevolve_steps, "memory": args.coevolve_memory,
                 "labels": args.coevolve_labels} if "coevo" in arms else None)
    sch = schedules(n, args.steps, coevolve)
    seconds = {f"{arm}/seed{seed}": run_arm(arm, sch[arm], args, seed) for seed in args.seed_list for arm in arms}
    per_seed = evaluate(args, arms, n)
    agg = aggregate(per_seed)
    res = {"mean_over_seeds": agg, "per_seed": per_seed, "seconds": seconds, "schedules": {a: sch[a] for a in arms},
           "args": {k: str(v) for k, v in vars(args).items()}}
    for seed in args.seed_list:
        for arm in arms:
            r = json.loads((run_dir(args, arm, seed) / "result.json").read_text())
            res.setdefault("switches", {})[f"{arm}/seed{seed}"] = r["switches"]
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    table = format_results(agg, len(args.seed_list))
    (args.out / "results.md").write_text(table)
    plot_arm_curves(args, arms, args.out / "curves.png")
    from training.ccl.hacking import table as hacking_table

    (args.out / "hacking.md").write_text(hacking_table([args.out], rule=HackRule.from_args(args)))
    print(table)
    return res


if __name__ == "__main__":
    main()
