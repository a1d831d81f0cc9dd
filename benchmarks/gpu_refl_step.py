"""Time one ReFL LoRA step of an SD-2.1-sized one-step SR policy on a CUDA GPU (issue 3 §5).

    python -m benchmarks.gpu_refl_step                   # 512x512 output, batch 1 2 4, bf16
    python -m benchmarks.gpu_refl_step --size 256 --batches 1 --device cpu --dtype fp32   # smoke run

The UNet (865 M parameters) and VAE are built from the Stable Diffusion 2.1 base configs with random
weights (no download); LoRA rank 8 on the UNet attention projections; the reward is the bundled
FinPercep-RM (or a tiny random one with --tiny_reward) at its finest stage. One step = the policy
forward (VAE encode, UNet at t=999, x0, VAE decode) + reward + backward + AdamW step. Prints a
Markdown table (median step time over --iters after --warmup, peak memory) and writes it as JSON
with --json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import DTYPES

ROOT = Path(__file__).resolve().parent.parent


def build_policy(device, dtype, gradient_checkpointing: bool):
    from training.ccl.components import full_size_policy

    policy = full_size_policy("onestep")
    if gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    policy.to(device)
    for n, p in policy.named_parameters():
        if "lora_" not in n:
            p.data = p.data.to(dtype)
    return policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="output side in px (LR side = size / 4)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--gradient_checkpointing", action="store_true")
    ap.add_argument("--tiny_reward", action="store_true", help="tiny random reward model (no bundled model needed)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for GPUs (use --device cpu --size 128 for a smoke run)")
    from diffusers_ext.models.finpercep_rm import FinPercepRM
    from diffusers_ext.rewards import RewardConfig, compute_reward, refl_loss

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    policy = build_policy(device, dtype, args.gradient_checkpointing)
    if args.tiny_reward:
        rm = FinPercepRM(backbone="tiny", backbone_kwargs={"widths": [8, 12, 16, 24]}, decoder_channels=8, head_hidden=16)
    else:
        from diffusers_ext.hub import resolve_model_dir

        rm = FinPercepRM.from_pretrained(str(resolve_model_dir(None)))
    rm.to(device).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.lora_parameters(), lr=1e-5)
    cfg = RewardConfig(lambda_global=1.0, lambda_pdm=1.0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    n_lora = sum(p.numel() for p in policy.lora_parameters())
    rows = []
    for b in args.batches:
        lr = torch.rand(b, 3, args.size // 4, args.size // 4, device=device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        try:
            for i in range(args.warmup + args.iters):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t = time.perf_counter()
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    out = policy(lr)
                    loss = refl_loss(compute_reward(rm, out["images"].float(), cfg, stage=rm.num_stages).reward)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - t)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            rows.append({"batch": b, "step_s": statistics.median(times), "img_per_s": b / statistics.median(times),
                         "peak_gib": peak})
        except torch.OutOfMemoryError:
            rows.append({"batch": b, "step_s": float("nan"), "img_per_s": float("nan"), "peak_gib": float("inf")})
            torch.cuda.empty_cache()
    print(f"\nReFL LoRA step, SD-2.1-sized one-step SR policy, {args.size}x{args.size} output, {args.dtype}, "
          f"LoRA r=8 ({n_lora / 1e6:.2f} M params), grad ckpt {args.gradient_checkpointing}, device: {name}\n")
    print("| batch | step time (s) | images/s | peak memory (GiB) |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['batch']} | {r['step_s']:.3f} | {r['img_per_s']:.2f} | {r['peak_gib']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "size": args.size, "dtype": args.dtype, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
