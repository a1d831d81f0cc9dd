"""Hack rounds: co-evolution of the reward with a full-reference teacher (issue 25, item 1).

    python -m training.hack_rounds --reward diffusers_ext/default --init data/models/v5 --rounds 2 \
        --versions data/versions_v6 --versions_val data/versions_v6val --fgr data/fgr_v4 --out runs/hack_rounds

Each round ``r`` (reward ``R_r``; ``R_0`` = ``--reward``):

1. **hack**: pure ReFL against ``R_r`` (the issue's command: ``training/ccl_lora.py --fidelity none``,
   default CCL schedule) for every ``--nets`` x ``--seeds``; each run's merged upscaler, PSNR / LPIPS /
   DISTS to HR and hack flag are kept;
2. **label**: ``--sets`` new version sets (``training/data/versions.py``) on the train photos, each with
   the outputs of every upscaler of this round (and of earlier rounds), labelled by the teacher;
3. **retrain**: ``R_{r+1}`` = ``training/fit_heads`` (``--refit heads``) or ``training/finetune_encoder``
   (``--refit encoder``) from ``--init`` on ``--versions`` plus every round's sets so far; with
   ``--adv_sets``, the heads also learn from attacks on every reward so far (``R_0 .. R_r``, one
   ``fit_heads --adv_model`` each: adversarial hard negatives, ordered by the teacher);
4. **check**: the outputs of this round's upscalers on crops of the *test* photos, scored by ``R_r`` and
   by ``R_{r+1}`` (``training/evaluate_whole_image``): the share below the clean crop before and after.
   Round ``r + 1``'s hack then says whether the policy still finds a way.

Every step is skipped when its output exists, so a killed run resumes where it stopped. Per round,
``rounds.jsonl`` (one JSON line) and ``rounds.md`` (a table) under ``--out`` log what the policy found
(PSNR drop, LPIPS / DISTS change, hack flag) and whether the next reward still falls for it.
``--fit_arg`` / ``--hack_arg`` pass extra flags to the retraining and the ReFL runs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
HACK_ARGS = ["--policy", "feedforward", "--ccl_config", str(ROOT / "training" / "configs" / "ccl_default.yaml"),
             "--max_train_steps", "300", "--train_batch_size", "4", "--hr_size", "128", "--learning_rate", "2e-4",
             "--lora_rank", "8", "--fidelity", "none"]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reward", required=True, help="R_0: the reward model the first round hacks")
    p.add_argument("--init", required=True, help="the model every retraining starts from (its encoder and maps)")
    p.add_argument("--versions", type=Path, action="append", required=True, help="base version-set folders; repeatable")
    p.add_argument("--versions_val", type=Path, required=True, help="validation version sets (other photos)")
    p.add_argument("--fgr", type=Path, required=True, help="FGR folder (triplets and calibration)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--nets", default="realesr-animevideov3-x4", help="comma-separated policies to hack with")
    p.add_argument("--seeds", default="0", help="comma-separated ReFL seeds")
    p.add_argument("--sets", type=int, default=150, help="new version sets per round")
    p.add_argument("--teacher", default="lpips_alex", help="the teacher metric(s) of the new sets and the retraining")
    p.add_argument("--refit", choices=["heads", "encoder"], default="heads")
    p.add_argument("--check_crops", type=int, default=40, help="test crops of the round's check")
    p.add_argument("--adv_sets", type=int, default=0,
                   help="with --refit heads: train sets given attacks on every reward so far "
                        "(fit_heads --adv_sets; 0 = off)")
    p.add_argument("--adv_per_set", type=int, default=2, help="versions attacked per set and reward")
    p.add_argument("--adv_steps", type=int, default=5, help="PGD steps of those attacks")
    p.add_argument("--keep_upscalers", type=Path, default=None,
                   help="copy every hacked upscaler here (e.g. benchmarks/hacked_upscalers) and build the version sets "
                        "from the copies, so that the rounds' data can be rebuilt after runs/ is gone")
    p.add_argument("--hack_arg", action="append", default=[], help="extra ccl_lora flag (repeatable, --hack_arg=--x=y)")
    p.add_argument("--fit_arg", action="append", default=[], help="extra retraining flag (repeatable)")
    return p.parse_args(argv)


def run(cmd: Sequence[str]) -> None:
    """One step, as a subprocess of this interpreter (the steps are the repository's own commands)."""
    print("hack_rounds:", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", *cmd], check=True)


def set_size(folder: Path) -> int:
    """How many versions the sets of a version-set folder hold (the clean crop included)."""
    rec = json.loads(next(line for line in (Path(folder) / "manifest.jsonl").open() if line.strip()))
    return len(rec["kinds"])


def hack(args: argparse.Namespace, reward: str, out: Path) -> dict[str, dict]:
    """Step 1: pure ReFL against ``reward``; ``{name: {"upscaler": path, **final metrics}}``."""
    found = {}
    for net in [n for n in args.nets.split(",") if n]:
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            name = f"{net}-s{seed}"
            run_dir = out / f"hack_{name}"
            if not (run_dir / "result.json").is_file():
                run(["training.ccl_lora", *HACK_ARGS, "--pretrained_model", net, "--seed", str(seed),
                     "--reward_model", reward, "--output_dir", str(run_dir), *args.hack_arg])
            res = json.loads((run_dir / "result.json").read_text())
            kept = keep(args, Path(res["upscaler"]), f"{out.name}-{name}")
            found[name] = {**res.get("final", {}), "upscaler": kept}
    return found


def keep(args: argparse.Namespace, upscaler: Path, name: str) -> str:
    """``upscaler``, or with ``--keep_upscalers`` its copy ``<dir>/<name>.safetensors`` (written once, atomically)."""
    if args.keep_upscalers is None:
        return str(upscaler)
    dst = args.keep_upscalers / f"{name}.safetensors"
    if not dst.is_file():
        args.keep_upscalers.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".tmp")
        shutil.copyfile(upscaler, tmp)
        tmp.replace(dst)
    return str(dst)


def label(args: argparse.Namespace, r: int, policies: dict[str, str], out: Path) -> Path:
    """Step 2: new version sets with the outputs of ``policies`` (the same set size as the base sets)."""
    folder = out / f"versions_round{r}"  # a name of its own: fit_heads keys its feature cache by folder name
    if not (folder / "versions.json").is_file() or sum(1 for _ in (folder / "manifest.jsonl").open()) < args.sets:
        per_set = set_size(args.versions[0]) - 1 - len(policies)
        if per_set < 1:
            raise ValueError(f"{len(policies)} policies leave no room in sets of {set_size(args.versions[0])} versions; "
                             "hack with fewer --nets x --seeds or base sets with more versions")
        run(["training.data.versions", "--out", str(folder), "--train", str(args.sets), "--val", "0",
             "--seed", str(1000 + r), "--metrics", args.teacher, "--versions-per-set", str(per_set),
             *[f"--policy={k}={v}" for k, v in policies.items()]])
    return folder


def retrain(args: argparse.Namespace, folders: list[Path], out: Path, attacked: Sequence[str] = ()) -> Path:
    """Step 3: the next reward model from ``--init`` on every version-set folder so far (and, with
    ``--adv_sets``, on attacks on every reward in ``attacked``)."""
    model = out / "reward" / "model"
    if not (model / "config.json").is_file():
        common = ["--init", args.init, *[a for f in folders for a in ("--versions", str(f))],
                  "--versions_val", str(args.versions_val), "--fgr", str(args.fgr), "--teacher", args.teacher,
                  "--output_dir", str(out / "reward")]
        if args.refit == "heads":
            adv = ([f"--adv_sets={args.adv_sets}", f"--adv_per_set={args.adv_per_set}", f"--adv_steps={args.adv_steps}",
                    *[f"--adv_model={m}" for m in attacked]] if args.adv_sets > 0 else [])
            run(["training.fit_heads", *common, "--cache", str(args.out / "heads_cache"), *adv, *args.fit_arg])
        else:
            run(["training.finetune_encoder", *common, "--resume", *args.fit_arg])
    return model


def check(args: argparse.Namespace, policies: dict[str, str], reward: str, out: Path, tag: str) -> dict[str, float]:
    """Step 4: share of test crops whose policy outputs score below the clean crop, under ``reward``."""
    res_path = out / f"check_{tag}"
    if not res_path.with_suffix(".json").is_file():
        run(["training.evaluate_whole_image", "--model", reward, "--bench", str(out / "check_bench"),
             "--n", str(args.check_crops), "--networks", "", *[f"--policy={k}={v}" for k, v in policies.items()],
             "--out", str(res_path), "--title", f"{tag}: {reward}"])
    kinds = json.loads(res_path.with_suffix(".json").read_text())["kinds"]
    return {k.split(":", 1)[1]: v["below_clean"] for k, v in kinds.items() if k.startswith("policy:")}


def table(rows: list[dict]) -> str:
    lines = ["| round | reward | policy | PSNR | LPIPS-alex | DISTS | hack flag | below clean, this reward | below clean, next |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for name, h in row["hacks"].items():
            lines.append(f"| {row['round']} | {row['reward']} | {name} | {h.get('psnr', float('nan')):.2f} | "
                         f"{h.get('lpips_alex', float('nan')):.3f} | {h.get('dists', float('nan')):.3f} | "
                         f"{int(h.get('hack', 0))} | {row['below_before'].get(name, float('nan')):.3f} | "
                         f"{row['below_after'].get(name, float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> list[dict]:
    args = parse_args(argv)
    if args.adv_sets > 0 and args.refit != "heads":
        raise ValueError("--adv_sets needs --refit heads (finetune_encoder has no adversarial negatives)")
    args.out.mkdir(parents=True, exist_ok=True)
    reward, folders, rows = args.reward, list(args.versions), []
    hacked: list[str] = []
    policies: dict[str, str] = {}
    for r in range(args.rounds):
        out = args.out / f"round{r}"
        found = hack(args, reward, out)
        new = {f"r{r}-{k}": v["upscaler"] for k, v in found.items()}
        policies.update(new)
        folders.append(label(args, r, policies, out))
        hacked.append(reward)
        nxt = str(retrain(args, folders, out, hacked))
        row = {"round": r, "reward": reward, "next_reward": nxt,
               "hacks": {f"r{r}-{k}": v for k, v in found.items()},
               "below_before": check(args, new, reward, out, "before"),
               "below_after": check(args, new, nxt, out, "after")}
        rows.append(row)
        reward = nxt
    (args.out / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "rounds.md").write_text(table(rows))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
