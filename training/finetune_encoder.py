"""Train the encoder itself on whole-image version sets, with the maps held by self-distillation
(reward model v6, approach 3 of issue 24).

    python -m training.finetune_encoder --init diffusers_ext/default --versions data/versions_v6 \
        --fgr data/fgr_v4 --output_dir runs/v6_encoder

``training.fit_heads`` reads a frozen pooled feature; its validation figures show that feature is the
limit (pair agreement 0.98 on the train sets, 0.82 on new photos). Here every weight trains:

- whole-image order and scale from the teacher (:func:`training.whole_image.order_loss`) on the
  versions of each crop, at every stage 0..N;
- the FGR triplets' ranking ``S_sr < S_syn < S_gt`` (:func:`training.train_reward.ranking_loss`) and
  garbage images below the damaged photos, with a raw-score floor, as in ``fit_heads``;
- **map self-distillation**: every stage's map of every image (version sets and FGR triplets) is
  pulled toward the initial model's map (a soft-target BCE on the logits), so the pasted-defect maps
  stay what they were while the features under the score move.

The encoder and decoder learn at ``--encoder_lr``, the score heads at ``--learning_rate``; batch norm
keeps its statistics (eval mode). Checkpoints every ``--checkpointing_steps`` into
``<output_dir>/checkpoint`` (atomically) and ``--resume`` continues from it; at the end the score is
calibrated per stage on the FGR validation split and the model written to ``<output_dir>/model``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffusers_ext.models.finpercep_rm import FinPercepRM
from training.checkpointing import atomic_write_dir, recover_dir
from training.fit_heads import stage_inputs, stage_scores, write_outputs
from training.data.fgr_dataset import FGRDataset
from training.robustness import garbage_batch
from training.train_reward import ranking_loss
from training.whole_image import OrderConfig, VersionSets, order_figures, order_loss, parse_teacher

logger = logging.getLogger("finetune_encoder")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", required=True, help="the trained reward model to start from (its maps are kept)")
    p.add_argument("--versions", type=Path, action="append", required=True, help="version-set folder; repeatable")
    p.add_argument("--versions_val", type=Path, default=None, help="version sets of the val split (default: first --versions)")
    p.add_argument("--fgr", type=Path, required=True, help="FGR folder (triplets, and the calibration's val split)")
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--teacher", default="lpips_alex", help="teacher metrics and weights (training/whole_image.py)")
    p.add_argument("--val_teacher", default="lpips_vgg+dists")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch_versions", type=int, default=3, help="version sets per step (all their versions)")
    p.add_argument("--batch_triplets", type=int, default=6, help="FGR triplets per step")
    p.add_argument("--batch_garbage", type=int, default=2)
    p.add_argument("--learning_rate", type=float, default=2e-4, help="score heads")
    p.add_argument("--encoder_lr", type=float, default=3e-5, help="encoder and decoder")
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--slope", type=float, default=1.5)
    p.add_argument("--min_gap", type=float, default=0.01)
    p.add_argument("--lambda_cal", type=float, default=0.5)
    p.add_argument("--lambda_rank", type=float, default=2.0, help="FGR triplet ranking")
    p.add_argument("--margin", type=float, default=0.1)
    p.add_argument("--lambda_garbage", type=float, default=0.5)
    p.add_argument("--margin_garbage", type=float, default=0.3)
    p.add_argument("--raw_floor", type=float, default=-1.0)
    p.add_argument("--lambda_keep_maps", type=float, default=1.0, help="map self-distillation toward --init")
    p.add_argument("--lambda_nt", type=float, default=0.0,
                   help="gradient-norm regularization (Liu et al., NT): the score's rise along sign(grad) at "
                        "--nt_eps, a finite-difference estimate of eps * ||grad_x S||_1 (0 = off)")
    p.add_argument("--nt_eps", type=float, default=2.0, help="NT step, in 1/255 units (the attack benchmark's budget)")
    p.add_argument("--nt_images", type=int, default=8, help="NT: damaged versions per step")
    p.add_argument("--fgr_items", type=int, default=3000)
    p.add_argument("--fgr_val_items", type=int, default=300)
    p.add_argument("--val_sets", type=int, default=60)
    p.add_argument("--validation_steps", type=int, default=100)
    p.add_argument("--checkpointing_steps", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoint when it exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=None)
    return p.parse_args(argv)


def all_stage_outputs(model: FinPercepRM, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Raw scores ``[B, N + 1]`` of every stage and the map logits of stages 1..N (differentiable)."""
    inputs, logits = stage_inputs(model, model.encode(x), tuple(x.shape[-2:]))
    return stage_scores(model, inputs), logits


def nt_penalty(model: FinPercepRM, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean rise of every stage's raw score from ``x`` to ``x + eps * sign(grad_x S)`` (``S``: the mean
    over stages; the step of a one-step L-inf attack): the finite-difference estimate of
    ``eps * ||grad_x S||_1`` that NT penalizes. One extra forward-backward for the direction, one
    forward-backward through both scores."""
    xg = x.detach().clone().requires_grad_(True)
    base = all_stage_outputs(model, xg)[0]
    (grad,) = torch.autograd.grad(base.mean(1).sum(), xg, retain_graph=True)
    moved = all_stage_outputs(model, (x + eps * grad.sign()).clamp(0, 1))[0]
    return F.relu(moved - base).mean()


def keep_maps_loss(logits: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
    """Soft-target BCE of every stage's map logits toward the reference model's maps."""
    return sum(F.binary_cross_entropy_with_logits(lg, torch.sigmoid(r)) - F.binary_cross_entropy_with_logits(
        r, torch.sigmoid(r)) for lg, r in zip(logits, ref)) / len(logits)


@torch.no_grad()
def validate(model: FinPercepRM, sets: VersionSets, fgr: FGRDataset, n_fgr: int = 100) -> dict[str, float]:
    """Per stage (first and last): version-set order figures and FGR triplet / pair accuracy."""
    s, t = [], []
    for i in range(len(sets)):
        x = torch.from_numpy(sets.images(i)).permute(0, 3, 1, 2).float().div(255)
        s.append(all_stage_outputs(model, x)[0].numpy())
        t.append(sets.distances(i))
    s, t = np.stack(s), np.stack(t)
    out: dict[str, float] = {}
    last = model.num_stages
    for k in (0, last):
        for key, v in order_figures(s[..., k], t).items():
            out[f"s{k}/{key}"] = v
    f = []
    for i in range(min(n_fgr, len(fgr))):
        it = fgr[i]
        f.append(all_stage_outputs(model, torch.stack([it["gt"], it["syn"], it["sr"]]))[0].numpy())
    f = np.stack(f)
    for k in (0, last):
        out[f"s{k}/triplet_acc"] = float(np.mean((f[:, 0, k] > f[:, 1, k]) & (f[:, 1, k] > f[:, 2, k])))
        out[f"s{k}/pair_acc"] = float(np.mean(f[:, 0, k] > f[:, 2, k]))
    return out


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    t0 = time.time()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    ckpt = args.output_dir / "checkpoint"
    recover_dir(ckpt)
    resume = args.resume and (ckpt / "state.json").is_file()
    if (ckpt / "state.json").is_file() and not resume:
        raise FileExistsError(f"{ckpt} holds a run: pass --resume to continue it, or another --output_dir")
    model = FinPercepRM.from_pretrained(str(ckpt / "model") if resume else args.init).eval()
    ref = FinPercepRM.from_pretrained(args.init).eval().requires_grad_(False)
    teacher = parse_teacher(args.teacher)
    tr_sets = [VersionSets(folder, "train", teacher) for folder in args.versions]
    index = [(a, i) for a, sets in enumerate(tr_sets) for i in range(len(sets))]
    va_sets = VersionSets(args.versions_val or args.versions[0], "val", parse_teacher(args.val_teacher),
                          limit=args.val_sets)
    fgr_tr = FGRDataset(args.fgr, "train", limit_index=args.fgr_items)
    fgr_va = FGRDataset(args.fgr, "val", limit=args.fgr_val_items)
    size = int(fgr_tr[0]["gt"].shape[-1])
    garbage = garbage_batch(256, size, args.seed)

    heads = list(model.score_heads.parameters())
    body = [p for n, p in model.named_parameters() if not n.startswith("score_heads.")]
    opt = torch.optim.AdamW([{"params": heads, "lr": args.learning_rate},
                             {"params": body, "lr": args.encoder_lr}], weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[args.learning_rate, args.encoder_lr],
                                                total_steps=args.steps, pct_start=0.05)
    start, history = 0, []
    if resume:
        info = json.loads((ckpt / "state.json").read_text())
        if info.get("steps", args.steps) != args.steps:
            raise ValueError(f"{ckpt} is a run of --steps {info['steps']}, not {args.steps}: resume with "
                             f"--steps {info['steps']}, or pass another --output_dir for a new run")
        state = torch.load(ckpt / "optimizer.pt", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = info["step"], info["history"]
        logger.info("resumed from %s at step %d", ckpt, start)
    else:
        history.append({"step": 0, **validate(model, va_sets, fgr_va)})
        logger.info("before: %s", {k: round(v, 3) for k, v in history[-1].items()})
    cfg = OrderConfig(slope=args.slope, min_gap=args.min_gap, lambda_cal=args.lambda_cal)
    n_stages = model.num_stages + 1
    for step in tqdm(range(start, args.steps), desc="finetune encoder", initial=start, total=args.steps):
        rng = np.random.default_rng([args.seed, step])   # per-step draws: a resumed run sees the same batches
        picks = [index[j] for j in rng.integers(0, len(index), args.batch_versions)]
        ims = [torch.from_numpy(tr_sets[a].images(i)) for a, i in picks]
        xv = torch.cat(ims).permute(0, 3, 1, 2).float().div(255)
        k = max(len(v) for v in ims)                     # sets of other folders may hold fewer versions
        valid = torch.zeros(len(picks), k, dtype=torch.bool)
        tv = torch.zeros(len(picks), k)
        for r, ((a, i), v) in enumerate(zip(picks, ims)):
            valid[r, : len(v)] = True
            tv[r, : len(v)] = torch.from_numpy(tr_sets[a].distances(i))
        items = [fgr_tr[int(j)] for j in rng.integers(0, len(fgr_tr), args.batch_triplets)]
        xf = torch.stack([t for it in items for t in (it["gt"], it["syn"], it["sr"])])
        xg = garbage[torch.from_numpy(rng.integers(0, len(garbage), args.batch_garbage))]
        x = torch.cat([xv, xf, xg])
        with torch.no_grad():
            ref_logits = ref.decode_all_logits(ref.encode(x[: len(xv) + len(xf)]))
        scores, logits = all_stage_outputs(model, x)
        sv = scores.new_zeros(len(picks), k, n_stages).masked_scatter(valid[..., None], scores[: len(xv)])
        sf = scores[len(xv): len(xv) + len(xf)].view(len(items), 3, n_stages)
        sg = scores[len(xv) + len(xf):]
        terms = {"order": 0.0, "cal": 0.0, "rank": 0.0, "garbage": 0.0, "floor": 0.0}
        loss = 0.0
        for s in range(n_stages):
            o = order_loss(sv[..., s], tv, cfg, valid)
            rank = ranking_loss(sf[:, 0, s], sf[:, 1, s], sf[:, 2, s], args.margin, args.margin)
            garb = F.relu(args.margin_garbage - (sf[: len(sg), 2, s].detach() - sg[:, s])).mean()
            floor = F.relu(args.raw_floor - scores[:, s]).mean()
            loss = loss + (o["loss"] + args.lambda_rank * rank + args.lambda_garbage * garb + floor) / n_stages
            for name, v in (("order", o["order"]), ("cal", o["cal"]), ("rank", rank), ("garbage", garb), ("floor", floor)):
                terms[name] += float(v.detach()) / n_stages
        if args.lambda_nt > 0:
            pick = torch.from_numpy(rng.choice(len(xv), min(args.nt_images, len(xv)), replace=False))
            nt = nt_penalty(model, xv[pick], args.nt_eps / 255.0)
            terms["nt"] = float(nt.detach())
            loss = loss + args.lambda_nt * nt
        keep = keep_maps_loss([lg[: len(xv) + len(xf)] for lg in logits], ref_logits)
        terms["keep_maps"] = float(keep.detach())
        loss = loss + args.lambda_keep_maps * keep
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        opt.step()
        sched.step()
        done = step + 1
        if done % args.validation_steps == 0 or done == args.steps:
            history.append({"step": done, **{k_: round(v, 4) for k_, v in terms.items()},
                            **validate(model, va_sets, fgr_va)})
            logger.info("step %d: %s", done, {k_: round(v, 3) for k_, v in history[-1].items()})
        if done % args.checkpointing_steps == 0 or done == args.steps:
            def write(tmp: Path, done: int = done) -> None:
                model.save_pretrained(tmp / "model")
                torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optimizer.pt")
                (tmp / "state.json").write_text(json.dumps({"step": done, "steps": args.steps, "history": history}))
            atomic_write_dir(ckpt, write)
    model.requires_grad_(False)
    return write_outputs(model, fgr_va, args, model_card(args, history), t0, history=history)


def model_card(args: argparse.Namespace, history: list[dict]) -> str:
    """The model card: what was trained, the command, the validation figures before and after."""
    last = max(int(k[1:].split("/")[0]) for k in history[0] if k.startswith("s") and "/" in k)
    keys = [f"s{last}/clean_top", f"s{last}/pair_agree", f"s{last}/triplet_acc", f"s{last}/pair_acc"]
    rows = "\n".join(f"| {k} | {history[0].get(k, float('nan')):.3f} | {history[-1].get(k, float('nan')):.3f} |"
                      for k in keys)
    folders = " ".join(f"--versions {f}" for f in args.versions)
    return f"""---
library_name: diffusers
license: apache-2.0
tags: [image-quality-assessment, reward-model, super-resolution, finpercep]
---
# FinPercep-RM with an encoder trained on whole-image version sets

`{args.init}` with every weight trained on the teacher's (`{args.teacher}`) order of whole-image versions, the FGR
triplets and garbage images, its maps held to `{args.init}`'s by self-distillation (weight {args.lambda_keep_maps:g}),
NT gradient-norm regularization {args.lambda_nt:g}. Calibrated per stage on the FGR validation split.

Made by `python -m training.finetune_encoder --init {args.init} {folders} --fgr {args.fgr} --teacher {args.teacher}
--steps {args.steps} --learning_rate {args.learning_rate:g} --encoder_lr {args.encoder_lr:g}
--lambda_keep_maps {args.lambda_keep_maps:g} --lambda_nt {args.lambda_nt:g}`. Validation sets (other photos), teacher
`{args.val_teacher}`, at step 0 and step {history[-1].get("step", args.steps)}:

| figure | before | after |
|---|---|---|
{rows}
"""


if __name__ == "__main__":
    main()
