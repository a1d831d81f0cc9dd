"""Train one curriculum stage of FinPercep-RM on an FGR dataset (PAPER.md §3, §5).

    accelerate launch training/train_reward.py --data data/fgr --stage 0 --output_dir runs/rm/stage0
    accelerate launch training/train_reward.py --data data/fgr --stage 1 --init runs/rm/stage0/model \
        --output_dir runs/rm/stage1

Stage 0 trains the backbone and the global head (a plain global IQA: ranking + an anchor of the
GT score). Stage k >= 1 trains only what stage k adds (decoder level k and score head k, see
``FinPercepRM.stage_parameters``) with

    L = λ_map·|M(I_syn) - M_gt|_1 + λ_bce·BCE(M(I_syn), M_gt) + λ_clean·|M(I_gt)|_1
        + λ_rank·L_rank(S_sr < S_syn < S_gt) + λ_align·|S_gt^k - S_0(I_gt)|_1

so every earlier stage keeps its outputs and the score scale stays that of stage 0. Checkpoints
(``accelerator.save_state``) are written atomically; ``--resume_from_checkpoint latest`` continues
with exactly the batches an uninterrupted run would have seen. The result, ``<output_dir>/model``,
is a diffusers model folder (``FinPercepRM.from_pretrained``), also written atomically.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers_ext.models.finpercep_rm import FinPercepRM  # noqa: E402
from training.checkpointing import atomic_save_model, list_checkpoints, save_checkpoint  # noqa: E402,F401
from training.data.fgr_dataset import FGRDataset, collate, step_batches  # noqa: E402
from training.metrics import evaluate_stage  # noqa: E402

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
    g.add_argument("--learning_rate", type=float, default=None, help="default 3e-4 (stage 0) / 1e-3 (stages >= 1)")
    g.add_argument("--weight_decay", type=float, default=1e-4)
    g.add_argument("--warmup_steps", type=int, default=30)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("loss (PAPER.md §3; weights and margins are OURS)")
    g.add_argument("--lambda_map", type=float, default=1.0)
    g.add_argument("--lambda_bce", type=float, default=0.5, help="BCE on the map (OURS, sharper gradients than L1)")
    g.add_argument("--lambda_clean", type=float, default=0.5, help="L1 of the map of I_gt toward 0 (OURS)")
    g.add_argument("--lambda_rank", type=float, default=1.0)
    g.add_argument("--lambda_align", type=float, default=0.5)
    g.add_argument("--margin_sr", type=float, default=0.1, help="m1: S_syn - S_sr >= m1")
    g.add_argument("--margin_syn", type=float, default=0.1, help="m2: S_gt - S_syn >= m2")
    g.add_argument("--stage0_dense_weight", type=float, default=0.0,
                   help="stage 0: also train the encoder and every decoder level on the map losses (deep "
                        "supervision, OURS). Stage 0 still outputs no map; later stages start from these levels")
    g.add_argument("--stage0_anchor", type=float, default=1.0,
                   help="stage 0: target score of pristine GT (fixes the scale every later stage aligns to)")
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--checkpointing_steps", type=int, default=100)
    g.add_argument("--checkpoints_total_limit", type=int, default=2)
    g.add_argument("--resume_from_checkpoint", type=str, default=None, help="a checkpoint folder or 'latest'")
    g.add_argument("--validation_steps", type=int, default=200)
    g.add_argument("--validation_items", type=int, default=64)
    g.add_argument("--report_to", default="tensorboard")
    g.add_argument("--num_threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.stage > 0 and not args.init:
        p.error("--init (the previous stage's model folder) is required for stage >= 1")
    if args.learning_rate is None:
        args.learning_rate = 3e-4 if args.stage == 0 else 1e-3
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
    model.set_stage(args.stage)
    model.requires_grad_(False)
    for prm in model.stage_parameters(args.stage):
        prm.requires_grad_(True)
    if args.stage == 0 and args.stage0_dense_weight > 0:
        model.decoder.requires_grad_(True)  # warm start of every map level; stage 0 itself has no map
    return model


def ranking_loss(s_gt: torch.Tensor, s_syn: torch.Tensor, s_sr: torch.Tensor, m1: float, m2: float) -> torch.Tensor:
    """``max(0, m1 - (S_syn - S_sr)) + max(0, m2 - (S_gt - S_syn))``: wants S_sr < S_syn < S_gt."""
    return (F.relu(m1 - (s_syn - s_sr)) + F.relu(m2 - (s_gt - s_syn))).mean()


def stage_loss(model: FinPercepRM, batch: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """All loss terms of one batch at ``args.stage``; ``loss`` is their weighted sum."""
    n = batch["gt"].shape[0]
    x = torch.cat([batch["gt"], batch["syn"], batch["sr"]])
    stage = args.stage
    feats = model.encode(x) if stage == 0 else [f.detach() for f in _frozen_encode(model, x)]
    size = tuple(x.shape[-2:])
    score, _, logits = model.predict(feats, size, stage)
    s_gt, s_syn, s_sr = score[:n], score[n:2 * n], score[2 * n:]
    terms = {"rank": ranking_loss(s_gt, s_syn, s_sr, args.margin_sr, args.margin_syn)}
    if stage == 0:
        terms["align"] = (s_gt - args.stage0_anchor).abs().mean()
        terms["loss"] = args.lambda_rank * terms["rank"] + args.lambda_align * terms["align"]
        if args.stage0_dense_weight > 0:
            all_logits = model.decode_all_logits(feats)
            dense = [map_terms(model, lg, n, size, batch["mgt"], args) for lg in all_logits]
            terms["dense"] = torch.stack([d["map_loss"] for d in dense]).mean()
            terms["loss"] = terms["loss"] + args.stage0_dense_weight * terms["dense"]
        return terms
    with torch.no_grad():
        pooled0, c0 = model.modulated_sum(feats[-1][:n], None, size)
        s0_gt = model.score_from(pooled0 / c0, None, 0)
    mt = map_terms(model, logits, n, size, batch["mgt"], args)
    terms.update(map=mt["map"], bce=mt["bce"], clean=mt["clean"])
    terms["align"] = (s_gt - s0_gt).abs().mean()
    terms["loss"] = mt["map_loss"] + args.lambda_rank * terms["rank"] + args.lambda_align * terms["align"]
    return terms


def map_terms(model: FinPercepRM, logits: torch.Tensor, n: int, size: tuple[int, int], target: torch.Tensor,
              args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Map losses of a ``[gt; syn; sr]`` batch's logits: L1 and BCE of ``M(I_syn)`` against ``M_gt``
    and the L1 of ``M(I_gt)`` toward 0; ``map_loss`` is their weighted sum."""
    up = model.upsample_logits(logits[: 2 * n], size)
    m_gt_img, m_syn = torch.sigmoid(up[:n]), torch.sigmoid(up[n:])
    out = {"map": (m_syn - target).abs().mean(),
           "bce": F.binary_cross_entropy_with_logits(up[n:], target),
           "clean": m_gt_img.mean()}
    out["map_loss"] = args.lambda_map * out["map"] + args.lambda_bce * out["bce"] + args.lambda_clean * out["clean"]
    return out


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
    set_seed(args.seed)
    model = build_model(args)
    train_set = FGRDataset(args.data, "train", crop=args.crop, augment=True)
    val_split = "val"
    try:
        val_set = FGRDataset(args.data, val_split, limit=args.validation_items)
    except ValueError:
        val_split, val_set = "test", FGRDataset(args.data, "test", limit=args.validation_items)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)

    def lr_lambda(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw = accelerator.unwrap_model(model)
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
                                  config={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})

    batches = step_batches(len(train_set), args.batch_size, args.seed, start_step,
                           accelerator.process_index, accelerator.num_processes)
    bar = tqdm(range(start_step, args.max_steps), initial=start_step, total=args.max_steps,
               disable=not accelerator.is_local_main_process, desc=f"stage {args.stage}")
    model.train()
    if args.stage > 0:
        raw.encoder.eval()  # frozen encoder: BatchNorm statistics stay those of stage 0
    history: list[dict] = []
    logger.info("training steps %d -> %d", start_step, args.max_steps)
    for step in range(start_step, args.max_steps):
        batch = collate([train_set[key] for key in next(batches)])
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.accumulate(model):
            with accelerator.autocast():
                terms = stage_loss(raw, batch, args)
            accelerator.backward(terms["loss"])
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
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
            model.train()
            if args.stage > 0:
                raw.encoder.eval()
        if done % args.checkpointing_steps == 0 and done < args.max_steps:
            save_checkpoint(accelerator, ckpt_root, done, args.checkpoints_total_limit)
    bar.close()
    accelerator.wait_for_everyone()
    result = {"stage": args.stage, "steps": args.max_steps, "validation": history}
    if accelerator.is_main_process:
        atomic_save_model(raw, args.output_dir / "model")
        (args.output_dir / "result.json").write_text(json.dumps(result, indent=2))
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main()
