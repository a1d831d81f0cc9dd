"""CCL-scheduled ReFL LoRA fine-tuning of super-resolution policies with FinPercep-RM (PAPER.md §4-§5).

    accelerate launch -m training.ccl_lora --policy feedforward --pretrained_model realesr-animevideov3-x4 \\
        --ccl_config training/configs/ccl_default.yaml --max_train_steps 300 --output_dir runs/ccl
    accelerate launch -m training.ccl_lora --policy onestep --pretrained_model PATH_OR_HUB_ID_OF_AN_SD_MODEL \\
        --mixed_precision bf16 --gradient_checkpointing --push_to_hub --hub_model_id you/finpercep-osediff-lora

Per step: LR batch (HR photo crops degraded on the fly) -> policy (LoRA only trainable) -> SR image ->
frozen FinPercep-RM at the current CCL stage k -> ``R_k = λ1·S_global + λ2·(1 - softmax_k(M_pdm))`` ->
ReFL loss (``relu(-R + c)·grad_scale`` or ``-R·grad_scale``) + optional fidelity term -> LoRA update.
The CCL schedule (``--ccl_config``, JSON or YAML) lists the stages: reward-model stage, λ1, λ2 and a
step count or an automatic switch when the reward's moving average plateaus. A ``coevolve`` block
in the schedule (off when absent) makes the reward co-evolve: every K steps the policy's own outputs
become FGR items and the active reward stage is fine-tuned on them inside guard rails
(training/ccl/coevolve.py); the adapted reward model goes into each checkpoint and ``lora/reward_model/``.

Outputs in ``--output_dir``: ``checkpoints/checkpoint-<step>`` (atomic; ``--resume_from_checkpoint
latest``), ``lora/`` (the diffusers LoRA folder + model card, atomic), ``monitor.jsonl`` /
``monitor.png`` (reward-hacking monitor), ``train_log.jsonl``, ``result.json``, TensorBoard logs,
and with a co-evolving reward ``coevolve.jsonl`` (every update and its guard figures).

The same command is installed as ``finpercep-train-lora`` (training/cli.py). BRISQUE in the monitor
is optional (``--brisque auto``, the default): without its model files (Debian ``opencv-doc``, or
``$FINPERCEP_BRISQUE_DIR``) the run warns once and the ``brisque`` column is left out; ``--brisque on``
makes the files a requirement checked at start, ``--brisque off`` (or ``--no_brisque``) skips it.

Fidelity without HR (training/ccl/fidelity.py): ``--fidelity lr`` adds LR consistency, the L1 distance
of the SR output degraded back to the LR size (``--lr_consistency_kernel``: ``auto`` = ``area`` for
``--degradation clean``, whose LR inputs are exactly area downscales, else ``bicubic``; ``area``,
``bicubic`` (antialiased) or ``gaussian:SIGMA`` (Gaussian blur of SIGMA HR pixels, then sampling at the
LR pixel centres)) from the LR input. It never reads the HR image, so it serves real low-quality photos
with no HR; any policy kind (the decoded image of the diffusion policies), batch size and scale.

Per-term normalization (training/ccl/term_norm.py, OURS): ``--term_norm abs|std`` divides the global
score, the PDM penalty (one running scale per reward-model stage) and the fidelity term by a running
scale (EMA of the mean absolute value, or the standard deviation, momentum ``--term_norm_momentum``)
before fusion, so that λ1, λ2 and ``--lambda_fidelity`` weigh terms of comparable size; ``--grad_scale``
then scales the whole loss (fidelity included) and the default ReFL margin is a clean photo's
normalized reward. Off by default (``--term_norm off``: the loss of earlier runs, unchanged; measured in
docs/rl_recipe.md: ``std`` brings the gradient shares of score / PDM penalty / LR consistency at equal λ
to 21/52/27 %, against 5/9/86 % raw and 21/69/10 % with ``abs``, so use ``std``; neither makes equal λ
exactly equal pull, since a term's value is not its gradient). The running scales are in every checkpoint's trainer state (exact resume) and, per step, in
``train_log.jsonl`` (``scale/<term>``).

Hack flag (training/ccl/hackflag.py): each monitor evaluation gets ``hack`` = 1 when ``reward_final`` is
above its step-0 value by more than ``--hack_reward_margin`` (0.05) while LPIPS-VGG and DISTS to HR (``--hack_metrics``) are
both worse than at step 0 by more than ``--hack_perceptual_margin`` (0.01); a flagged evaluation logs
a warning line, and ``final_metrics.json`` / ``result.json['final']`` carry ``hack`` (the last
evaluation), ``hack_evals`` (flagged evaluations) and ``hack_first_step`` (-1: never).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from diffusers_ext.policies import POLICY_KINDS
from diffusers_ext.rewards import compute_reward, refl_loss
from training.distributed import end_run
from training.ccl.coevolve import MEMORY_FILE, REWARD_WEIGHTS
from training.ccl.fidelity import FIDELITY_KINDS, KERNEL_HELP, NEEDS_HR, fidelity_loss, parse_kernel
from training.ccl.hackflag import HackRule
from training.ccl.hackflag import add_arguments as add_hack_arguments
from training.ccl.hackflag import summary as hack_summary
from training.ccl.term_norm import NORM_MODES, TermScales, normalized_loss
from training.ccl.schedule import CCLSchedule, CurriculumTracker, load_mapping
from training.checkpointing import (checkpoint_step, find_checkpoint, read_checkpoint_json,
                                    save_checkpoint)

logger = logging.getLogger("ccl_lora")

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "ccl_default.yaml"  # installed with the package
DEFAULT_SRNET = "realesr-animevideov3-x4"
TRAINER_STATE = "trainer_state.json"
POLICY_WEIGHTS = "policy_lora.safetensors"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="CCL-scheduled ReFL LoRA fine-tuning of SR policies with the FinPercep-RM reward.",
        epilog="Launch with `accelerate launch [--multi_gpu --num_processes N] -m training.ccl_lora ...` "
               "(or run `finpercep-train-lora ...` / `python -m training.ccl_lora ...` in one process). "
               "Flags can also come from a JSON/YAML file: --config FILE (flags given on the command line win).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", type=Path, default=None,
                   help="JSON/YAML file of flag values ({'learning_rate': 1e-4, ...}); command-line flags override it")
    g = p.add_argument_group("policy (the SR model being fine-tuned)")
    g.add_argument("--policy", choices=POLICY_KINDS, default="feedforward",
                   help="feedforward: pretrained SR net (diffusers_ext.srnets); onestep: OSEDiff-style one-step SD "
                        "SR; upscale: StableDiffusionUpscalePipeline (multi-step, ReFL on a late step)")
    g.add_argument("--pretrained_model", default=None,
                   help=f"feedforward: an srnet name (default {DEFAULT_SRNET}); onestep/upscale: a diffusers "
                        "folder or Hub id (required; no repo id is hard-coded)")
    g.add_argument("--revision", default=None, help="Hub revision of --pretrained_model")
    g.add_argument("--variant", default=None, help="weight variant of --pretrained_model (e.g. fp16)")
    g.add_argument("--prompt", default="", help="fixed text prompt of the diffusion policies")
    g.add_argument("--onestep_timestep", type=int, default=999, help="onestep: the UNet timestep")
    g.add_argument("--upscale_steps", type=int, default=20, help="upscale: sampling steps")
    g.add_argument("--refl_min_step", type=int, default=None,
                   help="upscale: the gradient step is drawn in [this, upscale_steps-1] (default 3/4 of the steps)")
    g.add_argument("--noise_level", type=int, default=20, help="upscale: noise level of the LR conditioning")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora_rank", type=int, default=8)
    g.add_argument("--lora_alpha", type=float, default=None, help="default: the rank")
    g.add_argument("--lora_dropout", type=float, default=0.0)
    g.add_argument("--lora_targets", default=None,
                   help="comma-separated module names or a regex (default: every Conv2d of a feedforward net; "
                        "to_q,to_k,to_v,to_out.0 of the UNet)")
    g.add_argument("--lora_vae_encoder", action="store_true", help="onestep/upscale: also LoRA on the VAE encoder")
    g = p.add_argument_group("reward and curriculum (PAPER.md §4-§5)")
    g.add_argument("--reward_model", default=None,
                   help="FinPercep-RM folder or Hub id holding every curriculum stage (default: the bundled model)")
    g.add_argument("--ccl_config", type=Path, default=DEFAULT_CONFIG, help="CCL schedule file (JSON or YAML)")
    g.add_argument("--refl_loss", choices=["relu", "neg"], default="relu",
                   help="relu: relu(-R + margin)*grad_scale (ImageReward); neg: -R*grad_scale")
    g.add_argument("--refl_margin", type=float, default=None,
                   help="relu loss margin; default: the reward of a clean photo on the calibrated scale, "
                        "0.9·λ1 + λ2 of the current stage (no push past HR quality); 2.0 = ImageReward's")
    g.add_argument("--grad_scale", type=float, default=1e-3)
    g.add_argument("--fidelity", choices=FIDELITY_KINDS, default="none",
                   help="extra fidelity term: l1 / mse against the HR image, latent_mse against the encoded HR "
                        "(diffusion policies only), lr = LR consistency: L1 of the SR output degraded back to the "
                        "LR size against the LR input (no HR needed: real low-quality photos)")
    g.add_argument("--lambda_fidelity", type=float, default=1.0)
    g.add_argument("--lr_consistency_kernel", default="auto",
                   help=f"--fidelity lr: the degradation SR -> LR, {KERNEL_HELP}. auto: area for --degradation "
                        "clean (its exact kernel), else bicubic; area: block mean; bicubic: antialiased bicubic "
                        "downscale; gaussian:SIGMA: Gaussian blur (SIGMA in HR px) then LR-centre sampling")
    g.add_argument("--term_norm", choices=NORM_MODES, default="off",
                   help="per-term normalization before fusion: divide score, PDM penalty and fidelity by a running "
                        "scale (abs: EMA of |x|; std: running standard deviation); --grad_scale then scales the "
                        "whole loss. off: the raw terms (std recommended: docs/rl_recipe.md)")
    g.add_argument("--term_norm_momentum", type=float, default=0.99, help="EMA momentum of the running scales")
    g = p.add_argument_group("data")
    g.add_argument("--train_data", action="append", default=[],
                   help="a folder of HR photos (repeatable); added to --photo_sources")
    g.add_argument("--photo_sources", default="mate,plasma,opencv,skimage",
                   help="offline photo pools to use, comma-separated, or 'none'")
    g.add_argument("--hr_size", type=int, default=128, help="HR crop side (a multiple of the policy's scale)")
    g.add_argument("--degradation", choices=["realesrgan", "light", "clean", "mix"], default="mix",
                   help="how LR inputs are made from HR crops (training/data/degradations.py)")
    g = p.add_argument_group("optimization")
    g.add_argument("--max_train_steps", type=int, default=None,
                   help="optimizer steps in all (default: the schedule's total when every stage has 'steps')")
    g.add_argument("--train_batch_size", type=int, default=2, help="per process and micro-step")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--learning_rate", type=float, default=1e-5)
    g.add_argument("--lr_warmup_steps", type=int, default=0)
    g.add_argument("--adam_weight_decay", type=float, default=0.0)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                   help="default: accelerate's config")
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--allow_tf32", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num_threads", type=int, default=None, help="torch CPU threads per process")
    g = p.add_argument_group("checkpoints, logging, monitor")
    g.add_argument("--output_dir", type=Path, default=Path("runs/ccl_lora"))
    g.add_argument("--checkpointing_steps", type=int, default=100)
    g.add_argument("--checkpoints_total_limit", type=int, default=2)
    g.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint-<step> folder")
    g.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all or none")
    g.add_argument("--validation_steps", type=int, default=50, help="monitor every N steps (0: start and end only)")
    g.add_argument("--validation_images", type=int, default=4, help="size of the fixed held-out monitor batch")
    g.add_argument("--validation_split", default="val", help="photo split of the monitor batch")
    g.add_argument("--judge_model", default=None,
                   help="independent reward model for the monitor's judge_* columns, e.g. one trained with another "
                        "seed (default: none; the training reward model itself is no judge, so without another "
                        "model the columns are left out and the model card says so)")
    g.add_argument("--judge_stage", type=int, default=None, help="stage of the judge (default: its finest)")
    g.add_argument("--flag_threshold", type=float, default=0.5, help="judge PDM value that flags a pixel")
    g.add_argument("--brisque", choices=["auto", "on", "off"], default="auto",
                   help="BRISQUE in the monitor (needs the model files of Debian opencv-doc or $FINPERCEP_BRISQUE_DIR): "
                        "auto = when the files are there (else a warning and no brisque column), on = required "
                        "(checked at start), off = never")
    g.add_argument("--no_brisque", action="store_true", help="same as --brisque off")
    add_hack_arguments(g, "its step-0 value", "; LPIPS-alex taught the bundled v6, so it is not independent of "
                       "it; lpips_vgg turns on --monitor_lpips_vgg")
    g.add_argument("--monitor_lpips_vgg", action="store_true",
                   help="also LPIPS (VGG16) to HR in the monitor (lpips_alex and dists always; VGG16 costs about "
                        "as much as DISTS again)")
    g = p.add_argument_group("Hub")
    g.add_argument("--push_to_hub", action="store_true", help="upload <output_dir>/lora at the end")
    g.add_argument("--hub_model_id", default=None, help="owner/name of the adapter repo")
    g.add_argument("--hub_private", action="store_true")
    g.add_argument("--card_base_model", default=None,
                   help="Hub id written as base_model in the model card (default: --pretrained_model if a Hub id)")
    g.add_argument("--push_only", action="store_true", help="do not train: push an existing <output_dir>/lora")

    argv = sys.argv[1:] if argv is None else list(argv)
    pre, _ = p.parse_known_args(argv)
    if pre.config is not None:
        data = _read_config(pre.config)
        known = {a.dest for a in p._actions}
        bad = sorted(set(data) - known)
        if bad:
            p.error(f"--config {pre.config}: unknown keys {bad}")
        p.set_defaults(**{k: (Path(v) if k in ("output_dir", "ccl_config") and v is not None else v) for k, v in data.items()})
    args = p.parse_args(argv)
    args.argv = argv
    if args.no_brisque:
        args.brisque = "off"
    if args.push_only:
        if not args.hub_model_id:
            p.error("--push_only needs --hub_model_id")
        return args
    if args.pretrained_model is None:
        if args.policy != "feedforward":
            p.error(f"--policy {args.policy} needs --pretrained_model: a diffusers folder or Hub id "
                    f"({'a Stable Diffusion model' if args.policy == 'onestep' else 'a StableDiffusionUpscalePipeline'})")
        args.pretrained_model = DEFAULT_SRNET
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id owner/name")
    if args.fidelity == "latent_mse" and args.policy == "feedforward":
        p.error("--fidelity latent_mse needs a latent-diffusion policy; use l1 or mse with --policy feedforward")
    try:
        args.lr_kernel = parse_kernel(args.lr_consistency_kernel, args.degradation)
    except ValueError as e:
        p.error(str(e))
    if not 0.0 <= args.term_norm_momentum < 1.0:
        p.error(f"--term_norm_momentum must be in [0, 1), got {args.term_norm_momentum}")
    for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "lora_rank", "validation_images"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


def _read_config(path: Path) -> dict[str, Any]:
    data = load_mapping(path, "--config") or {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of flag names to values")
    return data


# --------------------------------------------------------------------------------------- building
def build_policy(args: argparse.Namespace):
    from diffusers_ext.policies import FeedForwardSRPolicy, OneStepSDPolicy, UpscaleSDPolicy

    if args.policy == "feedforward":
        policy = FeedForwardSRPolicy.from_pretrained(args.pretrained_model)
    elif args.policy == "onestep":
        policy = OneStepSDPolicy.from_pretrained(args.pretrained_model, prompt=args.prompt,
                                                 timestep=args.onestep_timestep, revision=args.revision,
                                                 variant=args.variant)
    else:
        policy = UpscaleSDPolicy.from_pretrained(args.pretrained_model, prompt=args.prompt, revision=args.revision,
                                                 num_inference_steps=args.upscale_steps,
                                                 refl_min_step=args.refl_min_step, noise_level=args.noise_level)
    targets = None
    if args.lora_targets:
        t = args.lora_targets
        targets = [s.strip() for s in t.split(",") if s.strip()] if "," in t or t.isidentifier() else t
    policy.add_lora(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout, target_modules=targets,
                    vae_encoder=args.lora_vae_encoder)
    if args.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    return policy


def load_reward_model(path: Optional[str], device: torch.device):
    from diffusers_ext.hub import resolve_model_dir
    from diffusers_ext.models.finpercep_rm import FinPercepRM

    folder = resolve_model_dir(path)
    if not (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(
            f"no reward model in {folder}: " + ("the bundled default is not trained yet; run "
                                                 "`python -m training.train_default` or pass --reward_model PATH|HUB_ID"
                                                 if path is None else "pass --reward_model with a FinPercep-RM folder (config.json + "
                                                 "diffusion_pytorch_model.safetensors) or Hub id"))
    rm = FinPercepRM.from_pretrained(str(folder)).to(device).eval()
    rm.requires_grad_(False)
    return rm


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + step * 1009 + micro * 101 + rank) % 2**63)


def lr_at(step: int, args: argparse.Namespace) -> float:
    if args.lr_warmup_steps and step < args.lr_warmup_steps:
        return args.learning_rate * (step + 1) / args.lr_warmup_steps
    return args.learning_rate


def command_line(args: argparse.Namespace) -> str:
    return "accelerate launch -m training.ccl_lora " + " ".join(shlex.quote(a) for a in args.argv)


def jsonable_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k not in ("argv", "lr_kernel")}


# --------------------------------------------------------------------------------------- main

def clean_reward_margin(cfg) -> float:
    """The ReFL margin on the calibrated score: the reward of a clean photo, ``0.9·λ1 + λ2`` (its
    calibrated score is 0.9 and its map about empty), so the policy is not pushed past HR quality."""
    from training.calibration import CLEAN_TARGET

    return CLEAN_TARGET * cfg.lambda_global + cfg.lambda_pdm

def main(argv: Optional[list[str]] = None,
         step_callback: Optional[Callable[[int, dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Train; returns the result record (also written to ``<output_dir>/result.json``).
    ``step_callback(step, record)``, when given, runs on every process after each optimizer step
    (once its checkpoint, if any, is written) with that step's training record."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.push_only:
        from training.ccl.export import push_folder

        url = push_folder(args.output_dir / "lora", args.hub_model_id, private=args.hub_private)
        return {"pushed": url}

    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from training.ccl.data import SRPairSampler, load_photos
    from training.ccl.export import (export_upscaler, model_card, push_folder, stages_reached, upscaler_name,
                                     write_lora_folder)
    from training.ccl.monitor import Monitor, plot_curves

    if args.brisque == "on":  # asked for explicitly: fail now, not after the models are loaded
        from training.ccl.monitor import brisque_unavailable

        why = brisque_unavailable()
        if why is not None:
            raise SystemExit(f"--brisque on: {why}")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    schedule = CCLSchedule.load(args.ccl_config)
    if args.max_train_steps is None:
        args.max_train_steps = schedule.fixed_length()
        if args.max_train_steps is None:
            raise SystemExit(f"{args.ccl_config} has plateau stages, so its length is open: pass --max_train_steps")
    report_to = None if args.report_to in ("none", "") else args.report_to
    args.output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(args.output_dir), logging_dir=str(args.output_dir / "logs")))
    check_sharding(accelerator)
    set_seed(args.seed)
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    logger.info("process %d of %d on %s", rank, world, device)

    rm = load_reward_model(args.reward_model, device)
    schedule.validate(num_rm_stages=rm.num_stages, source=str(args.ccl_config))
    tracker = CurriculumTracker(schedule)
    policy = build_policy(args)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    policy.to(device)
    if weight_dtype != torch.float32:  # frozen base weights in low precision, LoRA weights stay fp32
        for n, prm in policy.named_parameters():
            if "lora_" not in n:
                prm.data = prm.data.to(weight_dtype)
    params = policy.lora_parameters()
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in policy.parameters())
    logger.info("policy %s (%s): %d LoRA parameters of %d", args.policy, args.pretrained_model, n_train, n_all)
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.adam_weight_decay)

    sources = [] if args.photo_sources.strip().lower() == "none" else [s.strip() for s in args.photo_sources.split(",") if s.strip()]
    train_photos = load_photos("train", sources, args.train_data, min_side=args.hr_size)
    data = SRPairSampler(train_photos, args.hr_size, policy.scale, args.degradation, seed=args.seed)
    val_photos = load_photos(args.validation_split, sources, args.train_data, min_side=args.hr_size)
    val_lr, val_hr = SRPairSampler(val_photos, args.hr_size, policy.scale, args.degradation,
                                   seed=args.seed + 1).fixed_batch(args.validation_images)

    coevolver = None
    if schedule.coevolve is not None:
        from training.ccl.coevolve import RewardCoevolver

        coevolver = RewardCoevolver(rm, schedule.coevolve, train_photos, args.hr_size, policy.scale,
                                    args.degradation, args.seed)
        logger.info("co-evolving reward: %s", json.dumps(schedule.coevolve.to_dict()))

    policy_ddp, optimizer = accelerator.prepare(policy, optimizer)

    def save_hook(models, weights, output_dir):
        from safetensors.torch import save_file

        def save(tensors: dict[str, torch.Tensor], name: str) -> None:
            save_file(tensors, os.path.join(output_dir, name))
            os.chmod(os.path.join(output_dir, name), 0o644)  # safetensors writes 0600

        if accelerator.is_main_process:
            save(policy.trainable_state_dict(), POLICY_WEIGHTS)
            if coevolver is not None:  # the adapted reward model: a resumed run goes on from it
                save({k: v.contiguous() for k, v in rm.state_dict().items()}, REWARD_WEIGHTS)
                if coevolver.cfg.memory > 0:  # the hack memory (empty before the first update)
                    save(coevolver.memory_state(), MEMORY_FILE)
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        from safetensors.torch import load_file

        policy.load_trainable_state_dict(load_file(os.path.join(input_dir, POLICY_WEIGHTS)))
        if coevolver is not None:
            path = os.path.join(input_dir, REWARD_WEIGHTS)
            if not os.path.isfile(path):
                raise SystemExit(f"{input_dir} has no {REWARD_WEIGHTS}: it was written by a run without the "
                                 "co-evolving reward; resume it with its own schedule, or start a new --output_dir")
            rm.load_state_dict(load_file(path, device=str(device)))
            if coevolver.cfg.memory > 0:
                mpath = os.path.join(input_dir, MEMORY_FILE)
                if not os.path.isfile(mpath):
                    raise SystemExit(f"{input_dir} has no {MEMORY_FILE}: it was written by a run without the "
                                     "co-evolution memory; resume it with its own schedule, or start a new --output_dir")
                coevolver.load_memory_state(load_file(mpath))
        while models:
            models.pop()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    judge, judge_stage = None, None
    judge_name = independent_judge(args)
    if accelerator.is_main_process:
        if judge_name is not None:
            judge = load_reward_model(judge_name, device)
            judge_stage = judge.num_stages if args.judge_stage is None else args.judge_stage
            if not 0 <= judge_stage <= judge.num_stages:
                raise ValueError(f"--judge_stage {judge_stage}: the judge has stages 0..{judge.num_stages}")
        last = schedule.stages[-1]
        monitor = Monitor(val_lr, val_hr, rm, last.reward_config(schedule.reward), last.rm_stage, judge=judge,
                          judge_stage=judge_stage, flag_threshold=args.flag_threshold, brisque=args.brisque,
                          lpips_vgg=args.monitor_lpips_vgg,
                          hack_rule=HackRule.from_args(args))

    scales = TermScales(args.term_norm, args.term_norm_momentum)
    if args.fidelity == "lr":
        logger.info("fidelity: LR consistency, kernel %s (the HR images are not used by the loss)", args.lr_kernel)
    ckpt_root = args.output_dir / "checkpoints"
    start_step = 0
    train_log: list[dict[str, float]] = []
    resume = find_checkpoint(ckpt_root, args.resume_from_checkpoint)
    if args.resume_from_checkpoint and resume is None:
        logger.info("no complete checkpoint in %s: starting from scratch", ckpt_root)
    if resume is not None:
        accelerator.load_state(str(resume))
        start_step = checkpoint_step(resume)
        state = read_checkpoint_json(resume, TRAINER_STATE)
        tracker.load_state_dict(state["tracker"])
        train_log = state.get("train_log", [])
        if coevolver is not None:
            coevolver.load_state_dict(state.get("coevolve", {}))
        scales.load_state_dict(state.get("term_norm", {}))
        if accelerator.is_main_process:
            monitor.history = state.get("monitor", [])
        logger.info("resumed from %s at step %d, CCL stage %s", resume, start_step, tracker.stage.label(tracker.index))
    if start_step > args.max_train_steps:
        raise SystemExit(f"checkpoint step {start_step} is past --max_train_steps {args.max_train_steps}")
    if report_to:
        accelerator.init_trackers("ccl_lora", config={k: v for k, v in jsonable_args(args).items()
                                                      if isinstance(v, (int, float, str, bool))})

    def evaluate(step: int) -> None:
        if accelerator.is_main_process:
            with accelerator.autocast():
                rec = monitor.evaluate(policy, step, tracker.reward_config(), tracker.stage.rm_stage, device,
                                       extra={"ccl_stage": float(tracker.index)})
            accelerator.log({f"val/{k}": v for k, v in rec.items() if k != "step"}, step=step)
            logger.info("step %d monitor: %s", step, json.dumps({k: round(v, 4) for k, v in rec.items()}))
        accelerator.wait_for_everyone()

    def trainer_state() -> dict[str, Any]:
        return {"tracker": tracker.state_dict(), "train_log": train_log,
                "monitor": monitor.history if accelerator.is_main_process else [], "args": jsonable_args(args),
                **({"term_norm": scales.state_dict()} if scales.enabled else {}),
                **({"coevolve": coevolver.state_dict()} if coevolver is not None else {})}

    if start_step == 0:
        evaluate(0)
    bar = tqdm(range(start_step, args.max_train_steps), initial=start_step, total=args.max_train_steps,
               disable=not accelerator.is_local_main_process)
    policy_ddp.train()
    t0 = time.time()
    logger.info("training steps %d -> %d", start_step, args.max_train_steps)
    for step in range(start_step, args.max_train_steps):
        stage = tracker.stage
        rcfg = tracker.reward_config()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        sums = torch.zeros(4, device=device)  # reward, score, penalty, loss
        fid_sum = 0.0
        for micro in range(args.gradient_accumulation_steps):
            lr_img, hr_img = data.batch(args.train_batch_size, step, micro, rank, world)
            lr_img = lr_img.to(device)
            hr_img = hr_img.to(device) if args.fidelity in NEEDS_HR else None  # --fidelity lr: no HR
            gen = step_generator(args.seed, step, micro, rank)
            with accelerator.accumulate(policy_ddp):
                with accelerator.autocast():
                    out = policy_ddp(lr_img, generator=gen)
                    terms = compute_reward(rm, out["images"].float(), rcfg, stage=stage.rm_stage)
                    fid = (fidelity_loss(args.fidelity, out, policy, hr=hr_img, lr=lr_img, kernel=args.lr_kernel)
                           if args.fidelity != "none" else None)
                    if scales.enabled:
                        loss = normalized_loss(terms.score, terms.pdm_penalty, stage.rm_stage, rcfg, fid,
                                               args.lambda_fidelity, scales,
                                               lambda t: accelerator.reduce(t.to(device), reduction="mean"),
                                               args.refl_loss, args.grad_scale, args.refl_margin)
                    else:
                        margin = args.refl_margin if args.refl_margin is not None else clean_reward_margin(rcfg)
                        loss = refl_loss(terms.reward, args.refl_loss, margin, args.grad_scale)
                        if fid is not None:
                            loss = loss + args.lambda_fidelity * fid
                    if fid is not None:
                        fid_sum += float(fid.detach())
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sums += torch.stack([terms.reward.detach().mean(), terms.score.detach().mean(),
                                 terms.pdm_penalty.detach().mean(), loss.detach()]).float()
        sums = accelerator.reduce(sums / args.gradient_accumulation_steps, reduction="mean")
        reward, score, penalty, loss_v = (float(v) for v in sums)
        done = step + 1
        rec = {"step": done, "reward": reward, "score": score, "pdm_penalty": penalty, "loss": loss_v,
               "rm_stage": stage.rm_stage, "ccl_stage": tracker.index, "lr": lr_at(step, args)}
        if args.fidelity != "none":
            rec["fidelity"] = fid_sum / args.gradient_accumulation_steps
        if scales.enabled:
            rec.update({f"scale/{k}": v for k, v in scales.scales().items()})
        train_log.append(rec)
        accelerator.log({f"train/{k}": v for k, v in rec.items() if k != "step"}, step=done)
        event = tracker.update(done, reward)
        bar.set_description(f"CCL {stage.label(tracker.index if event is None else event['from'])}")
        bar.set_postfix(reward=f"{reward:.4f}", S=f"{score:.3f}", pen=f"{penalty:.3f}")
        bar.update(1)
        if event is not None:
            logger.info("CCL switch at step %d: stage %d (RM_%d) -> %d (RM_%d), reason %s", done, event["from"],
                        event["from_rm_stage"], event["to"], event["to_rm_stage"], event["reason"])
            accelerator.log({"ccl/switch_to_rm_stage": event["to_rm_stage"]}, step=done)
        if coevolver is not None and coevolver.due(done) and done < args.max_train_steps:
            crec = coevolver.update(policy, done, tracker.stage.rm_stage)
            sync_reward_model(accelerator, rm)
            accelerator.log({f"coevolve/{k}": float(v) for k, v in crec.items()
                             if isinstance(v, (int, float, bool)) and k != "step"}, step=done)
        if args.validation_steps and done % args.validation_steps == 0 and done < args.max_train_steps:
            evaluate(done)
        if done % args.checkpointing_steps == 0 and done < args.max_train_steps:
            save_checkpoint(accelerator, ckpt_root, done, args.checkpoints_total_limit,
                            extra_json={TRAINER_STATE: trainer_state()})
        if step_callback is not None:
            step_callback(done, rec)
    bar.close()
    evaluate(args.max_train_steps)
    accelerator.wait_for_everyone()

    result: dict[str, Any] = {"steps": args.max_train_steps, "seconds": round(time.time() - t0, 1),
                              "world_size": world, "switches": tracker.switches}
    # every rank must end with the same adapter (DDP all-reduces the LoRA gradients): check it
    flat = torch.cat([p.detach().float().flatten() for p in params]).to(device)
    gathered = accelerator.gather(flat[None])
    result["rank_max_abs_diff"] = float((gathered - gathered[:1]).abs().max())
    if coevolver is not None:  # ... and the same co-evolved reward model
        flat_rm = torch.nn.utils.parameters_to_vector(rm.parameters()).detach().float()
        gathered_rm = accelerator.gather(flat_rm[None])
        result["reward_rank_max_abs_diff"] = float((gathered_rm - gathered_rm[:1]).abs().max())
    # ... and must have switched the curriculum on the same steps (the tracker sees the all-reduced
    # reward): each rank's switch steps, one row per rank (-1: a switch that rank never made)
    own = torch.full((len(schedule.stages),), -1, dtype=torch.long)
    own[:len(tracker.switches)] = torch.tensor([s["step"] for s in tracker.switches], dtype=torch.long)
    result["rank_switch_steps"] = accelerator.gather(own.to(device)[None]).cpu().tolist()
    if any(row != result["rank_switch_steps"][0] for row in result["rank_switch_steps"]):
        logger.warning("the processes switched the curriculum on different steps: %s", result["rank_switch_steps"])
    if accelerator.is_main_process:
        final = dict(monitor.history[-1]) if monitor.history else {}
        final.update(hack_summary(monitor.history))
        if final.get("hack_evals", 0) > 0:
            logger.warning("the hack flag was raised at %d evaluation(s), first at step %d (rule: %s)",
                           int(final["hack_evals"]), int(final["hack_first_step"]), monitor.hack_rule.describe())
        result["final"] = final
        info = policy.card_info()
        if args.card_base_model:
            info["base_model"] = args.card_base_model
        stages = stages_reached(train_log, schedule.to_dict())
        result["stages_reached"] = [s["ccl_stage"] for s in stages if s["steps"]]
        upscaler, extra = None, []
        if args.policy == "feedforward":  # also the merged network for ComfyUI's core Load Upscale Model
            from diffusers_ext.srnets.export import UpscalerFormatError, check_exportable

            try:
                check_exportable(policy.net)
                upscaler = upscaler_name(args.pretrained_model)
                extra.append(lambda tmp: export_upscaler(args.policy, args.pretrained_model, tmp, upscaler,
                                                         {"finpercep_run": command_line(args)}))
            except UpscalerFormatError as e:
                logger.warning("no merged upscaler file for ComfyUI: %s", e)
        files = {"ccl_schedule.json": schedule.to_dict(), "final_metrics.json": final,
                 "ccl_switches.json": tracker.switches, "ccl_stages_reached.json": stages}
        if coevolver is not None:
            result["coevolve"] = coevolver.summary()
            files["coevolve.json"] = coevolver.history
            extra.append(lambda tmp: rm.save_pretrained(tmp / "reward_model"))
            _write_jsonl(args.output_dir / "coevolve.jsonl", coevolver.history)
        card = model_card(args.policy, info, schedule.to_dict(), {k: v for k, v in final.items() if k != "step"},
                          command_line(args), args.hub_model_id, jsonable_args(args), stages=stages,
                          judge=judge_name, upscaler_file=upscaler, coevolve=result.get("coevolve"))
        lora_dir = write_lora_folder(args.output_dir / "lora", policy, card, files, extra=extra)
        result["lora_dir"] = str(lora_dir)
        if upscaler:
            result["upscaler"] = str(lora_dir / upscaler)
        _write_jsonl(args.output_dir / "monitor.jsonl", monitor.history)
        _write_jsonl(args.output_dir / "train_log.jsonl", train_log)
        result["monitor_png"] = str(plot_curves(monitor.history, args.output_dir / "monitor.png", tracker.switches,
                                                train_history=train_log))
        (args.output_dir / "result.json").write_text(json.dumps(result, indent=1))
        if args.push_to_hub:
            result["pushed"] = push_folder(lora_dir, args.hub_model_id, private=args.hub_private)
    end_run(accelerator)
    return result


def independent_judge(args: argparse.Namespace) -> Optional[str]:
    """The ``--judge_model`` to load, or ``None`` when there is no judge other than the training reward
    model (not given, or the same folder / Hub id as ``--reward_model``): the reward model scoring its
    own policy only repeats ``score``, so the monitor then has no judge columns."""
    if args.judge_model is None:
        if args.judge_stage is not None:
            logger.warning("--judge_stage %s ignored: there is no --judge_model (the training reward model is no "
                           "independent judge)", args.judge_stage)
        return None
    from diffusers_ext.hub import DEFAULT_MODEL_DIR

    def key(name: Optional[str]) -> str:
        if name is None:
            return str(Path(DEFAULT_MODEL_DIR).resolve())
        p = Path(name).expanduser()
        return str(p.resolve()) if p.exists() else str(name)

    if key(args.judge_model) == key(args.reward_model):
        logger.warning("--judge_model %s is the training reward model itself: no independent judge, the judge "
                       "columns are left out", args.judge_model)
        return None
    return args.judge_model


def sync_reward_model(accelerator: Any, rm: torch.nn.Module) -> None:
    """Give every process the main process's reward model after a co-evolution update (each computes
    the same update from the same data; this removes any non-deterministic kernel's drift)."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        flat = torch.nn.utils.parameters_to_vector(rm.parameters()).detach().contiguous()
        torch.nn.utils.vector_to_parameters(broadcast(flat, from_process=0), rm.parameters())


def check_sharding(accelerator: Any) -> None:
    """Refuse parameter sharding (FSDP, DeepSpeed ZeRO-3) before any work: the adapter is written from
    the main process's own copy of the LoRA weights, which sharding would leave partial. DDP and
    DeepSpeed ZeRO-1/2 keep full parameters on every process and are fine."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    zero3 = kind == DistributedType.DEEPSPEED and getattr(
        getattr(accelerator.state, "deepspeed_plugin", None), "zero_stage", 0) == 3
    if kind == DistributedType.FSDP or zero3:
        raise SystemExit(f"{'DeepSpeed ZeRO-3' if zero3 else 'FSDP'} shards the parameters, and the LoRA export "
                         "reads the full adapter on the main process: use DDP (--multi_gpu) or DeepSpeed ZeRO "
                         "stage 1/2 (the LoRA adapter is small; sharding it saves little)")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
