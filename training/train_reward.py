"""Train one curriculum stage of FinPercep-RM on an FGR dataset (PAPER.md §3, §5).

    accelerate launch training/train_reward.py --data data/fgr --stage 0 --output_dir runs/rm/stage0
    accelerate launch training/train_reward.py --data data/fgr --stage 1 --init runs/rm/stage0/model \
        --output_dir runs/rm/stage1

Stage 0 trains the backbone and the global head (a plain global IQA: ranking + an anchor of the
GT score). Stage k >= 1 trains only what stage k adds (decoder level k and score head k, see
``FinPercepRM.stage_parameters``) with

    L = λ_map·|M(I_syn) - M_gt|_1 + λ_bce·BCE(M(I_syn), M_gt) + λ_clean·|M(I_gt)|_1
        + λ_rank·L_rank(S_sr < S_syn < S_gt) + λ_align·|S_gt^k - S_0(I_gt)|_1
        + λ_cons·|S(x') - S(x)|  + λ_adv·[adversarial terms] + λ_garbage·[garbage terms]

so every earlier stage keeps its outputs and the score scale stays that of stage 0. The last three
(reward model v3, ``training/robustness.py``) train robustness: ``x'`` is an invisible change of a
clean or damaged image (noise <= 2/255, 1-px shift, 1/255 offset) whose score must not move; an
L-inf PGD attack that raises the score of ``I_syn`` must not raise it (its map stays ``M_gt``);
garbage images must score below the damaged photos and be flagged everywhere. The loss runs
through the prepared (DDP) module's forward, so multi-process gradients are all-reduced. Checkpoints
(``accelerator.save_state``) are written atomically; ``--resume_from_checkpoint latest`` continues
with exactly the batches an uninterrupted run would have seen. The result, ``<output_dir>/model``,
is a diffusers model folder (``FinPercepRM.from_pretrained``), also written atomically.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from torch import nn

from diffusers_ext.models.finpercep_rm import FinPercepRM
from training.checkpointing import atomic_save_model, list_checkpoints, save_checkpoint  # noqa: F401
from training.distributed import end_run
from training.data.families import parse_families
from training.data.fgr_dataset import FGRDataset, collate, step_batches
from training.metrics import evaluate_stage
from training.robustness import attack_score, garbage_batch, imperceptible

logger = logging.getLogger("train_reward")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train one curriculum stage of FinPercep-RM.")
    g = p.add_argument_group("data and model")
    g.add_argument("--data", type=Path, required=True, help="FGR dataset folder (training/data/build_fgr.py)")
    g.add_argument("--stage", type=int, required=True, help="curriculum stage to train: 0 (global) .. N (finest)")
    g.add_argument("--init", type=str, default=None,
                   help="model folder of the previous stage (required for stage >= 1)")
    g.add_argument("--backbone", default="efficientnet_lite0", help="encoder of a new stage-0 model")
    g.add_argument("--model_config", type=str, default=None,
                   help="JSON dict of extra FinPercepRM config for a new stage-0 model")
    g.add_argument("--no_pretrained_backbone", action="store_true", help="stage 0: start the encoder from random")
    g.add_argument("--output_dir", type=Path, required=True)
    g = p.add_argument_group("optimization")
    g.add_argument("--max_steps", type=int, default=600)
    g.add_argument("--batch_size", type=int, default=8, help="triplets per step and process")
    g.add_argument("--crop", type=int, default=192, help="random crop side in px")
    g.add_argument("--learning_rate", type=float, default=None, help="default 3e-4 (stage 0, and --joint: a fine-tune of trained heads) / 1e-3 (stages >= 1)")
    g.add_argument("--weight_decay", type=float, default=1e-4)
    g.add_argument("--warmup_steps", type=int, default=30)
    g.add_argument("--lr_scheduler", default="cosine",
                   help="diffusers.optimization.get_scheduler name (cosine, linear, constant_with_warmup...)")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--freeze_bn", action="store_true",
                   help="stage 0: keep the encoder's BatchNorm statistics (ImageNet's, or --init's) instead of "
                        "batch statistics, folded into the convolutions: faster steps (BENCHMARKS.md section 6). "
                        "Stages >= 1 and --joint always keep them")
    g.add_argument("--freeze_levels", type=int, default=0,
                   help="stage 0 and --joint: keep the encoder's stem and its first N feature levels frozen (no "
                        "backward through its high-resolution layers: faster steps; 0 = train them all)")
    g = p.add_argument_group("loss (PAPER.md §3; weights and margins are OURS)")
    g.add_argument("--lambda_map", type=float, default=1.0)
    g.add_argument("--lambda_bce", type=float, default=0.5, help="BCE on the map (OURS, sharper gradients than L1)")
    g.add_argument("--lambda_clean", type=float, default=0.5, help="L1 of the map of I_gt toward 0 (OURS)")
    g.add_argument("--lambda_rank", type=float, default=1.0)
    g.add_argument("--lambda_align", type=float, default=0.5)
    g.add_argument("--margin_sr", type=float, default=0.1, help="m1: S_syn - S_sr >= m1")
    g.add_argument("--margin_syn", type=float, default=0.1, help="m2: S_gt - S_syn >= m2")
    g.add_argument("--rank_floor", type=float, default=0.0,
                   help="weight each triplet's ranking term by its defect's visibility, min(1, mean GT map in "
                        "the swapped region / this): the score need not separate changes too faint to see "
                        "(0 = every triplet the full margin; see perceptibility())")
    g.add_argument("--stage0_dense_weight", type=float, default=0.0,
                   help="stage 0: also train the encoder and every decoder level on the map losses (deep "
                        "supervision, OURS). Stage 0 still outputs no map; later stages start from these levels")
    g.add_argument("--joint", action="store_true",
                   help="train stages 0..--stage together, the encoder too (at --encoder_lr_scale x the learning "
                        "rate, BatchNorm statistics frozen): the loss is the mean of every stage's loss on one "
                        "shared encoding (OURS: the encoder trained past stage 0; needs --init)")
    g.add_argument("--joint_encoder", choices=["all", "maps", "robust"], default="all",
                   help="--joint: what trains the encoder: every loss term ('all'), the map losses only ('maps': "
                        "the scores then see the encoding without its gradient), or the map losses and the "
                        "robustness terms (--lambda_consistency, --lambda_adv) but not the ranking ('robust')")
    g.add_argument("--encoder_lr_scale", type=float, default=0.3,
                   help="--joint: the encoder's share of the lr (0.3 x 3e-4: a third of its stage-0 rate)")
    g.add_argument("--stage0_anchor", type=float, default=1.0,
                   help="stage 0: target score of pristine GT (fixes the scale every later stage aligns to)")
    g = p.add_argument_group("robustness (reward model v3; 0 switches a term off; see README for what each cost)")
    g.add_argument("--lambda_consistency", type=float, default=0.0,
                   help="|S(x') - S(x)| / gap for invisible changes x' of the clean and the damaged image "
                        "(gap: the batch's mean S(I_gt) - S(I_sr)); off here by default, 0.1 in training.train_default's "
                        "recipe (halved the noise shift at no AUROC cost); at 0.5 (with --lambda_adv 0.5) the "
                        "scores collapsed (README)")
    g.add_argument("--min_gap", type=float, default=0.25, help="floor of that gap")
    g.add_argument("--perturb_sigma", type=float, default=2.0, help="max noise std of x', in 1/255 units")
    g.add_argument("--consistency_fraction", type=float, default=0.5, help="share of the batch's I_gt and I_sr copied")
    g.add_argument("--lambda_adv", type=float, default=0.0,
                   help="PGD attacks that raise S(I_syn) as negatives: S must not rise, map stays M_gt")
    g.add_argument("--adv_eps", type=float, default=3.0, help="L-inf budget of the attack, in 1/255 units")
    g.add_argument("--adv_steps", type=int, default=2)
    g.add_argument("--adv_fraction", type=float, default=0.25, help="share of the batch's I_syn attacked")
    g.add_argument("--lambda_garbage", type=float, default=0.5,
                   help="garbage images (noise, flat, stripes, blocks) score below I_sr and are flagged")
    g.add_argument("--garbage_fraction", type=float, default=0.25, help="garbage images per triplet")
    g.add_argument("--margin_garbage", type=float, default=0.3, help="S_sr - S_garbage >= this")
    g.add_argument("--train_start", type=int, default=0,
                   help="use only the train items with index >= this (with --train_limit: a range; a judge "
                        "trained on a range disjoint from the reward model's saw other triplets)")
    g.add_argument("--train_limit", type=int, default=None,
                   help="use only the train items with index < this (a fixed subset of a larger dataset)")
    g.add_argument("--exclude_families", default="",
                   help="train without items containing these families (comma-separated, or 'protocol' "
                        "for the held-out families of training/data/families.py)")
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--checkpointing_steps", type=int, default=100)
    g.add_argument("--checkpoints_total_limit", type=int, default=2)
    g.add_argument("--resume_from_checkpoint", type=str, default=None, help="a checkpoint folder or 'latest'")
    g.add_argument("--validation_steps", type=int, default=200)
    g.add_argument("--validation_items", type=int, default=64)
    g.add_argument("--report_to", default="tensorboard")
    g.add_argument("--num_threads", type=int, default=None, help="torch CPU threads")
    g = p.add_argument_group("Hub")
    g.add_argument("--push_to_hub", action="store_true",
                   help="upload <output_dir>/model with a model card at the end; the repo is created (or "
                        "found) first, so a bad token or repo id fails before any training")
    g.add_argument("--hub_model_id", default=None,
                   help="owner/name of the model repo (default: the --output_dir folder name in your namespace)")
    g.add_argument("--hub_token", default=None, help="Hub token (default: HF_TOKEN or the `hf auth login` token)")
    g.add_argument("--hub_private", action="store_true", help="create the repo private")
    args = p.parse_args(argv)
    if args.stage > 0 and not args.init:
        p.error("--init (the previous stage's model folder) is required for stage >= 1")
    if args.freeze_levels < 0:
        p.error("--freeze_levels counts encoder levels: give 0 (train them all) or more")
    if args.joint and (args.stage < 1 or not args.init):
        p.error("--joint trains the stages of a trained model together: give --stage >= 1 and --init")
    if args.learning_rate is None:
        args.learning_rate = 3e-4 if args.stage == 0 or args.joint else 1e-3
    args.exclude = parse_families(args.exclude_families)
    return args


def loss_settings(stage: int, **overrides: Any) -> argparse.Namespace:
    """The settings :func:`stage_loss` reads, with this script's defaults at ``stage`` and
    ``overrides`` (for code that reuses the stage objective outside this trainer, e.g. the
    co-evolving reward of training/ccl/coevolve.py)."""
    args = parse_args(["--data", ".", "--stage", str(stage), "--init", ".", "--output_dir", "."])
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise ValueError(f"stage_loss has no setting {key!r}")
        setattr(args, key, value)
    return args


def build_model(args: argparse.Namespace) -> FinPercepRM:
    if args.init:
        model = FinPercepRM.from_pretrained(args.init)
    else:
        extra = json.loads(args.model_config) if args.model_config else {}
        model = FinPercepRM(backbone=args.backbone, **extra)
        if not args.no_pretrained_backbone:
            model.encoder.load_pretrained()
    if args.stage > model.num_stages:
        raise ValueError(f"--stage {args.stage} but the model has stages 0..{model.num_stages}")
    model.set_default_stage(args.stage)  # the saved checkpoint opens at the stage it was trained for
    model.requires_grad_(False)
    for stage in range(args.stage + 1) if args.joint else (args.stage,):
        for prm in model.stage_parameters(stage):
            prm.requires_grad_(True)
    if args.stage == 0 and args.stage0_dense_weight > 0:
        model.decoder.requires_grad_(True)  # warm start of every map level; stage 0 itself has no map
    for module in model.encoder.level_modules(args.freeze_levels) if args.freeze_levels else ():
        module.requires_grad_(False)
    return model


def keep_frozen_statistics(model: FinPercepRM, args: argparse.Namespace) -> None:
    """After ``model.train()``: the encoder's BatchNorm statistics stay fixed (eval mode, folded into
    the convolutions) at stages >= 1 (a frozen encoder, or ``--joint``'s) and under ``--freeze_bn``."""
    if args.stage > 0:
        model.encoder.eval()
    elif args.freeze_bn:
        for m in model.encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def param_groups(model: FinPercepRM, args: argparse.Namespace) -> list[dict]:
    """The optimizer's parameter groups: the trainable parameters at the learning rate, except the
    encoder's under ``--joint``, at ``--encoder_lr_scale`` times it."""
    enc = {id(p) for p in model.encoder.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not args.joint:
        return [{"params": trainable}]
    return [{"params": [p for p in trainable if id(p) not in enc]},
            {"params": [p for p in trainable if id(p) in enc], "lr": args.learning_rate * args.encoder_lr_scale}]


def ranking_loss(s_gt: torch.Tensor, s_syn: torch.Tensor, s_sr: torch.Tensor, m1: float, m2: float,
                 weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``max(0, m1 - (S_syn - S_sr)) + max(0, m2 - (S_gt - S_syn))``: wants S_sr < S_syn < S_gt;
    ``weight`` (one per triplet, e.g. :func:`perceptibility`) weights each triplet's term."""
    hinge = F.relu(m1 - (s_syn - s_sr)) + F.relu(m2 - (s_gt - s_syn))
    return hinge.mean() if weight is None else (weight.to(hinge) * hinge).mean()


def perceptibility(mgt: torch.Tensor, mask: torch.Tensor, floor: float) -> torch.Tensor:
    """How visible each triplet's defect is, in ``[0, 1]``: the mean GT map inside the swapped region
    over ``floor`` (clipped at 1). The GT map grows with the difference to the clean photo (Gaussian
    noise of 1/255 gives about 0.016, 4/255 about 0.08, 8/255 about 0.17), so with ``floor`` 0.1 a
    faint change asks little of the score and a clearly visible one the full margin (OURS)."""
    inside = (mgt.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0))
    return (inside / floor).clamp(0.0, 1.0)


def _layout(counts: dict[str, int]) -> dict[str, slice]:
    out, start = {}, 0
    for name, k in counts.items():
        out[name] = slice(start, start + k)
        start += k
    return out


def term_rows(n: int, fraction: float) -> torch.Tensor:
    """The rows of a local batch of ``n`` that a robustness term uses: row ``j`` when
    ``floor((j + 1) * fraction) > floor(j * fraction)``, i.e. a ``fraction`` of the rows, evenly
    spread (at least one). The pattern repeats every ``1 / fraction`` rows, so when
    ``n * fraction`` is whole the rows that ``world`` processes take together are exactly those one
    process takes from the global batch (any process count trains on the same examples)."""
    j = np.arange(n)
    f = min(max(float(fraction), 0.0), 1.0)
    rows = np.nonzero(np.floor((j + 1) * f + 1e-9) > np.floor(j * f + 1e-9))[0]
    return torch.from_numpy(rows if len(rows) else np.array([n - 1]))


def robustness_inputs(model: FinPercepRM, batch: dict[str, torch.Tensor], args: argparse.Namespace, step: int,
                      rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """The extra images of one step: invisible copies of ``gt`` and ``sr`` (``gt_p``, ``sr_p``), an
    attack on part of ``syn`` (``adv``) and ``garbage``. All randomness comes from ``(seed, step)``
    drawn for the global batch and sliced by rank, so resume and any process count give the same
    (the rows of each term: :func:`term_rows`)."""
    n, size = batch["gt"].shape[0], batch["gt"].shape[-1]
    gen = torch.Generator().manual_seed(int(np.random.default_rng([args.seed, step, 11]).integers(2**62)))
    out: dict[str, torch.Tensor] = {}
    if args.lambda_consistency > 0:
        rows = term_rows(n, args.consistency_fraction)
        # one call per kind: each draws for the global batch of that kind, so the rank slices line up
        for kind in ("gt", "sr"):
            out[f"{kind}_p"] = imperceptible(batch[kind][rows], gen, args.perturb_sigma / 255.0, rank, world)
    if args.lambda_adv > 0 and args.adv_steps > 0:
        rows = term_rows(n, args.adv_fraction)
        was = model.training
        model.eval()
        sz = tuple(batch["syn"].shape[-2:])
        out["adv"] = attack_score(lambda z: model.predict(model.encode(z), sz, args.stage)[0], batch["syn"][rows],
                                  args.adv_eps / 255.0, args.adv_steps, gen, rank, world)
        model.train(was)
        if was:
            keep_frozen_statistics(model, args)
    if args.lambda_garbage > 0:
        k = len(term_rows(n, args.garbage_fraction))
        out["garbage"] = garbage_batch(k * world, size, int(np.random.default_rng([args.seed, step, 13]).integers(2**62))
                                       )[rank * k:(rank + 1) * k].to(batch["gt"])
    return out


_IMAGES = ("gt", "syn", "sr", "gt_p", "sr_p", "adv", "garbage")


def _rows(batch: dict[str, torch.Tensor]) -> dict[str, slice]:
    """Which rows of :func:`_stack`'s tensor hold which images of the batch."""
    return _layout({k: batch[k].shape[0] for k in _IMAGES if k in batch})


def _stack(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The images of a batch stacked into one tensor, in the order of :func:`_rows`."""
    return torch.cat([batch[k] for k in _IMAGES if k in batch])


JOINT_ENCODER_MOVED_BY = {"all": "every loss", "maps": "the map losses only",
                          "robust": "the map losses and the robustness terms"}  # --joint_encoder, in words


def stage_loss(model: FinPercepRM, batch: dict[str, torch.Tensor], args: argparse.Namespace,
               stage: Optional[int] = None, feats: Optional[list[torch.Tensor]] = None,
               score_feats: Optional[list[torch.Tensor]] = None,
               robust_live: bool = False) -> dict[str, torch.Tensor]:
    """All loss terms of one batch at ``stage`` (default ``args.stage``); ``loss`` is their weighted
    sum. ``batch`` may hold the extra images of :func:`robustness_inputs` (``gt_p``, ``sr_p``,
    ``adv``, ``garbage``); ``feats``, the encoding of its stacked images, is computed (with gradient
    at stage 0 only) unless given; ``score_feats``, when given, is the encoding the scores are
    computed from (the maps still come from ``feats``; with ``robust_live`` the consistency and attack
    terms use scores from ``feats``, so they reach an encoder the other score terms do not)."""
    n = batch["gt"].shape[0]
    lay = _rows(batch)
    stage = args.stage if stage is None else stage
    if feats is None:
        x = _stack(batch)
        feats = model.encode(x) if stage == 0 else [f.detach() for f in _frozen_encode(model, x)]
    size = tuple(batch["gt"].shape[-2:])
    live_score = None  # the score from ``feats`` when it differs from ``score``: the robustness terms' under robust_live
    if score_feats is None:
        score, _, logits = model.predict(feats, size, stage)
    else:
        if robust_live and ("gt_p" in lay or "adv" in lay):
            live_score, _, logits = model.predict(feats, size, stage)  # one decoding gives both
        else:
            logits = model.decode_logits(feats, stage)
        score = model.predict(score_feats, size, stage)[0]
    s = {k: score[sl] for k, sl in lay.items()}
    live = s if live_score is None else {k: live_score[sl] for k, sl in lay.items()}
    weight = perceptibility(batch["mgt"], batch["mask"], args.rank_floor) if args.rank_floor > 0 else None
    terms = {"rank": ranking_loss(s["gt"], s["syn"], s["sr"], args.margin_sr, args.margin_syn, weight)}
    total = args.lambda_rank * terms["rank"]
    # Robustness in units of the batch's own clean-damaged gap (as the benchmark measures it): an
    # absolute penalty would be cheapest to meet by shrinking the whole score scale.
    gap = (s["gt"] - s["sr"]).mean().detach().abs().clamp_min(args.min_gap)
    if "gt_p" in s:
        rows = term_rows(n, args.consistency_fraction)
        terms["consistency"] = 0.5 * ((live["gt_p"] - live["gt"][rows]).abs().mean()
                                      + (live["sr_p"] - live["sr"][rows]).abs().mean()) / gap
        total = total + args.lambda_consistency * terms["consistency"]
    if "adv" in s:
        rows = term_rows(n, args.adv_fraction)
        terms["adv"] = (F.relu(live["adv"] - live["syn"][rows].detach()).mean() / gap
                        + F.relu(args.margin_syn - (live["gt"][rows] - live["adv"])).mean())
        total = total + args.lambda_adv * terms["adv"]
    if "garbage" in s:
        rows = term_rows(n, args.garbage_fraction)
        terms["garbage"] = F.relu(args.margin_garbage - (s["sr"][rows].detach() - s["garbage"])).mean()
        total = total + args.lambda_garbage * terms["garbage"]
    if stage == 0:
        terms["align"] = (s["gt"] - args.stage0_anchor).abs().mean()
        total = total + args.lambda_align * terms["align"]
        if args.stage0_dense_weight > 0:
            dense = [map_terms(model, lg, lay, size, batch, args) for lg in model.decode_all_logits(feats)]
            terms["dense"] = torch.stack([d["map_loss"] for d in dense]).mean()
            total = total + args.stage0_dense_weight * terms["dense"]
        terms["loss"] = total
        return terms
    with torch.no_grad():
        gt_feats = [f[lay["gt"]] for f in feats]
        s0_gt = model.score_from(model.pooled(gt_feats, None, size), None, 0)
    mt = map_terms(model, logits, lay, size, batch, args)
    terms.update({k: v for k, v in mt.items() if k != "map_loss"})
    terms["align"] = (s["gt"] - s0_gt).abs().mean()
    terms["loss"] = total + mt["map_loss"] + args.lambda_align * terms["align"]
    return terms


def map_terms(model: FinPercepRM, logits: torch.Tensor, lay: dict[str, slice], size: tuple[int, int],
              batch: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Map losses of a stacked batch's logits (``lay`` names the rows): L1 and BCE of ``M(I_syn)``
    against ``M_gt``, the L1 of ``M(I_gt)`` (and of its invisible copy) toward 0, the attacked
    ``I_syn`` toward its ``M_gt``, garbage toward 1; ``map_loss`` is their weighted sum."""
    up = model.upsample_logits(logits, size)
    target = batch["mgt"]
    syn = up[lay["syn"]]
    clean = torch.cat([up[lay[k]] for k in ("gt", "gt_p") if k in lay])
    out = {"map": (torch.sigmoid(syn) - target).abs().mean(),
           "bce": F.binary_cross_entropy_with_logits(syn, target),
           "clean": torch.sigmoid(clean).mean()}
    loss = args.lambda_map * out["map"] + args.lambda_bce * out["bce"] + args.lambda_clean * out["clean"]
    if "adv" in lay:
        a = up[lay["adv"]]
        t = target[term_rows(target.shape[0], args.adv_fraction)]
        out["adv_map"] = (torch.sigmoid(a) - t).abs().mean() + F.binary_cross_entropy_with_logits(a, t)
        loss = loss + args.lambda_adv * out["adv_map"]
    if "garbage" in lay:
        g = up[lay["garbage"]]
        out["garbage_map"] = F.binary_cross_entropy_with_logits(g, torch.ones_like(g))
        loss = loss + args.lambda_garbage * out["garbage_map"]
    out["map_loss"] = loss
    return out


def joint_loss(model: FinPercepRM, batch: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """``--joint``: the mean of the losses of stages 0..``args.stage`` on one encoding that keeps its
    gradient, so the encoder learns from every stage's maps while each head keeps its own targets;
    the terms reported are the last stage's, plus ``loss_s<k>`` for each stage. ``--joint_encoder
    maps``: the scores are computed from the encoding without its gradient, so only the maps train
    the encoder; ``robust``: the maps and the robustness terms do."""
    feats = model.encode(_stack(batch))
    score_feats = [f.detach() for f in feats] if args.joint_encoder in ("maps", "robust") else None
    per = [stage_loss(model, batch, args, stage=k, feats=feats, score_feats=score_feats,
                      robust_live=args.joint_encoder == "robust")
           for k in range(args.stage + 1)]
    terms = dict(per[-1])
    terms.update({f"loss_s{k}": t["loss"] for k, t in enumerate(per)})
    terms["loss"] = torch.stack([t["loss"] for t in per]).mean()
    return terms


class PhaseTimer:
    """Wall seconds per phase of the training loop (data, robustness inputs, forward, backward,
    optimizer), summed over the steps of this run: ``result.json``'s ``timing`` (where the time goes;
    ``benchmarks/bench_train_reward.py`` reads it)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.steps = 0

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

    def summary(self, batch_size: int) -> dict[str, float]:
        total = sum(self.seconds.values())
        out = {f"{k}_s_per_step": round(v / max(self.steps, 1), 4) for k, v in self.seconds.items()}
        out["s_per_step"] = round(total / max(self.steps, 1), 4)
        out["triplets_per_s"] = round(self.steps * batch_size / total, 3) if total else 0.0
        out["steps_timed"] = self.steps
        return out


class StageObjective(nn.Module):
    """The model and its stage loss as one module, so ``accelerator.prepare`` wraps the loss
    computation itself: under DDP the gradients of every step are all-reduced across processes
    (calling the unwrapped model would silently skip that)."""

    def __init__(self, model: FinPercepRM, args: argparse.Namespace) -> None:
        super().__init__()
        self.model, self.args = model, args

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return (joint_loss if self.args.joint else stage_loss)(self.model, batch, self.args)


@torch.no_grad()
def _frozen_encode(model: FinPercepRM, x: torch.Tensor) -> list[torch.Tensor]:
    return model.encode(x)


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    report_to = None if args.report_to in ("none", "") else args.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(args.output_dir), logging_dir=str(args.output_dir / "logs")),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    repo_id = create_hub_repo(args) if args.push_to_hub and accelerator.is_main_process else None
    set_seed(args.seed)
    model = build_model(args)
    train_set = FGRDataset(args.data, "train", crop=args.crop, augment=True, exclude_families=args.exclude,
                           limit_index=args.train_limit, start_index=args.train_start)
    val_split = "val"
    try:
        val_set = FGRDataset(args.data, val_split, limit=args.validation_items, exclude_families=args.exclude)
    except ValueError:
        val_split = "test"
        val_set = FGRDataset(args.data, "test", limit=args.validation_items, exclude_families=args.exclude)
    if args.exclude:
        logger.info("excluding families %s: %d train items left", ",".join(args.exclude), len(train_set))
    groups = param_groups(model, args)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay)
    from diffusers.optimization import get_scheduler

    # the prepared scheduler steps once per process and step: count in process-steps
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps * accelerator.num_processes,
                              num_training_steps=args.max_steps * accelerator.num_processes)
    objective, optimizer, scheduler = accelerator.prepare(StageObjective(model, args), optimizer, scheduler)
    raw = accelerator.unwrap_model(objective).model
    ckpt_root = args.output_dir / "checkpoints"
    ckpt_root.mkdir(exist_ok=True)
    start_step = 0
    if args.resume_from_checkpoint:
        if args.resume_from_checkpoint == "latest":
            found = list_checkpoints(ckpt_root)
            path = found[-1] if found else None
        else:
            path = Path(args.resume_from_checkpoint)
        if path is None:
            logger.info("no checkpoint in %s: starting from scratch", ckpt_root)
        else:
            accelerator.load_state(str(path))
            start_step = json.loads((path / "step.json").read_text())["step"]
            logger.info("resumed from %s at step %d", path, start_step)
    if report_to:
        accelerator.init_trackers(f"finpercep_rm_stage{args.stage}",
                                  config={k: str(v) if isinstance(v, (Path, tuple)) else v for k, v in vars(args).items()
                                          if k != "hub_token"})

    batches = step_batches(len(train_set), args.batch_size, args.seed, start_step,
                           accelerator.process_index, accelerator.num_processes)
    bar = tqdm(range(start_step, args.max_steps), initial=start_step, total=args.max_steps,
               disable=not accelerator.is_local_main_process, desc=f"stage {args.stage}")
    objective.train()
    keep_frozen_statistics(raw, args)
    history: list[dict] = []
    logger.info("training steps %d -> %d", start_step, args.max_steps)
    timer = PhaseTimer()
    for step in range(start_step, args.max_steps):
        with timer("data"):
            batch = collate([train_set[key] for key in next(batches)])
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with timer("robustness_inputs"):
            batch.update(robustness_inputs(raw, batch, args, step, accelerator.process_index, accelerator.num_processes))
        with accelerator.accumulate(objective):
            with timer("forward"), accelerator.autocast():
                terms = objective(batch)
            with timer("backward"):
                accelerator.backward(terms["loss"])
            with timer("optimizer"):
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        timer.steps += 1
        logs = {f"train/{k}": float(v.detach()) for k, v in terms.items()}
        logs["train/lr"] = scheduler.get_last_lr()[0]
        accelerator.log(logs, step=step + 1)
        bar.set_postfix(loss=f"{logs['train/loss']:.4f}", rank=f"{logs['train/rank']:.3f}")
        bar.update(1)
        done = step + 1
        if done % args.validation_steps == 0 or done == args.max_steps:
            figures = evaluate_stage(raw, val_set, args.stage, device=accelerator.device)
            accelerator.log({f"{val_split}/{k}": v for k, v in figures.items()}, step=done)
            history.append({"step": done, **figures})
            logger.info("step %d %s: %s", done, val_split, json.dumps({k: round(v, 4) for k, v in figures.items()}))
            objective.train()
            keep_frozen_statistics(raw, args)
        if done % args.checkpointing_steps == 0 and done < args.max_steps:
            save_checkpoint(accelerator, ckpt_root, done, args.checkpoints_total_limit)
    bar.close()
    accelerator.wait_for_everyone()
    result = {"stage": args.stage, "steps": args.max_steps, "validation": history,
              "world_size": accelerator.num_processes, "timing": timer.summary(args.batch_size)}
    # every rank must end with the same weights (DDP all-reduces the gradients): check it
    flat = torch.cat([prm.detach().float().flatten() for prm in raw.parameters()])
    gathered = accelerator.gather(flat[None])
    result["rank_max_abs_diff"] = float((gathered - gathered[:1]).abs().max())
    if result["rank_max_abs_diff"] > 0:
        logger.warning("the processes ended with different weights (max abs difference %.3g); the model of "
                       "process 0 is saved", result["rank_max_abs_diff"])
    if accelerator.is_main_process:
        if args.push_to_hub:
            from training.checkpointing import atomic_write_dir

            card = model_card(args, repo_id, result)
            atomic_write_dir(args.output_dir / "model", lambda tmp: (raw.save_pretrained(tmp), card.save(tmp / "README.md")))
        else:
            atomic_save_model(raw, args.output_dir / "model")
        if args.push_to_hub:
            result["pushed"] = push_model(args.output_dir / "model", repo_id, args)
        (args.output_dir / "result.json").write_text(json.dumps(result, indent=2))
    end_run(accelerator)
    return result


def create_hub_repo(args: argparse.Namespace) -> str:
    """Create (or find) the ``--hub_model_id`` repo before any work, so that a bad token or repo id
    fails at once rather than after training; returns the full repo id."""
    from huggingface_hub import create_repo

    name = args.hub_model_id or args.output_dir.resolve().name
    try:
        return create_repo(name, token=args.hub_token, private=args.hub_private, exist_ok=True).repo_id
    except Exception as exc:  # noqa: BLE001 - turned into one clear message
        why = " ".join(str(exc).split())
        raise SystemExit(f"--push_to_hub: cannot create or open the Hub repo {name!r} ({exc.__class__.__name__}: "
                         f"{why}). Nothing was trained. Check --hub_token / HF_TOKEN (`hf auth login`) and that "
                         "the token may write to that namespace, or leave out --push_to_hub") from exc


def model_card(args: argparse.Namespace, repo_id: str, result: dict):
    """The model card of ``<output_dir>/model`` (huggingface_hub ``ModelCard``): metadata, use, how it
    was trained and the last validation figures."""
    from huggingface_hub import ModelCard, ModelCardData

    from diffusers_ext.hub import is_hub_id

    data = ModelCardData(library_name="diffusers",
                         tags=["finpercep", "reward-model", "image-quality-assessment", "super-resolution",
                               f"curriculum-stage-{args.stage}"],
                         base_model=args.init if args.init and is_hub_id(args.init) else None)
    figures = result["validation"][-1] if result["validation"] else {}
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in figures.items() if k != "step" and isinstance(v, float))
    start = f"`{args.init}` (stage {args.stage - 1})" if args.init else "a new model"
    moved_by = f" (the encoder moved by {JOINT_ENCODER_MOVED_BY[args.joint_encoder]})" if args.joint_encoder != "all" else ""
    trained = (f"stages 0..{args.stage} and the encoder were trained together last (`--joint`{moved_by}), "
               f"starting from `{args.init}`" if args.joint else f"stage {args.stage} was trained last, starting from {start}")
    return ModelCard(f"""---
{data.to_yaml()}
---

# FinPercep-RM, curriculum stage {args.stage}

A FinPercep-RM fine-grained perceptual reward model: a global quality score (higher = better) and a
Perceptual Degradation Map (per pixel, in [0, 1], higher = more degraded). This checkpoint holds
every curriculum stage up to {args.stage}; {trained}.

## Use

```python
from diffusers_ext import FinPercepRewardPipeline

pipe = FinPercepRewardPipeline.from_pretrained("{repo_id}", stage={args.stage})
out = pipe("image.png")   # out.scores, out.pdms, out.overlays
```

## Training

`training/train_reward.py --stage {args.stage}`: {args.max_steps} steps of {args.batch_size} triplets per process on
{result["world_size"]} process(es), {args.crop} px crops, AdamW at {args.learning_rate:g} ({args.lr_scheduler},
{args.warmup_steps} warm-up steps), gradient clipping {args.max_grad_norm:g}, seed {args.seed}, data
`{args.data.name}`{", without the families " + ", ".join(args.exclude) if args.exclude else ""}.

## Validation (step {figures.get("step", "-")})

| metric | value |
|---|---|
{rows}
""")


def push_model(folder: Path, repo_id: str, args: argparse.Namespace) -> str:
    """Upload the finished model folder; a failure names the safe local copy and how to retry."""
    from huggingface_hub import upload_folder

    try:
        info = upload_folder(repo_id=repo_id, folder_path=str(folder), token=args.hub_token,
                             commit_message=f"FinPercep-RM stage {args.stage} ({args.max_steps} steps)")
    except Exception as exc:  # noqa: BLE001 - re-raised with the way out
        why = " ".join(str(exc).split())
        raise RuntimeError(f"pushing {folder} to the Hub repo {repo_id!r} failed ({exc.__class__.__name__}: {why}). "
                           f"The model is complete in {folder}; upload it again with `hf upload {repo_id} {folder}`"
                           ) from exc
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s to %s", folder, url)
    return url


if __name__ == "__main__":
    main()
