"""What ``--term_norm`` does to the loss terms of ccl_lora, measured on the bundled reward model and a
real policy (the measurement behind its default, docs/rl_recipe.md):

    python -m benchmarks.term_norm_scales [--batches 6] [--batch 4] [--hr_size 128]

On fixed training batches of the base policy (LoRA freshly added, its B factors set to small noise so
every factor has a gradient), per term: its value (mean |x|, std over the batch) and the norm of its
gradient with respect to the LoRA parameters. Terms: the global score at stage 0 and at the last
stage, the PDM penalty of the last stage, LR consistency (bicubic) and L1 to HR. Then the share of the
gradient each term has in the loss ccl_lora minimizes at lambda_global = lambda_pdm = lambda_fidelity = 1:
raw (``1e-3·(-S + P) + F``: ``--grad_scale`` on the reward only) and normalized by each mode's scales
(``--term_norm abs`` / ``std``). Prints a JSON record.
"""
from __future__ import annotations

import argparse
import json

import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="realesr-animevideov3-x4")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--hr_size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from diffusers_ext.policies import FeedForwardSRPolicy
    from training.ccl.data import SRPairSampler, load_photos
    from training.ccl.fidelity import fidelity_loss, parse_kernel
    from training.ccl.term_norm import TermScales, batch_stats
    from training.ccl_lora import load_reward_model

    dev = torch.device("cpu")
    rm = load_reward_model(None, dev)
    n = rm.num_stages
    policy = FeedForwardSRPolicy.from_pretrained(args.net).add_lora(8, 8)
    for name, prm in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(prm, std=1e-3)
    params = policy.lora_parameters()
    data = SRPairSampler(load_photos("train", ["mate", "plasma", "opencv", "skimage"], min_side=args.hr_size),
                         args.hr_size, policy.scale, "mix", seed=0)
    kernel = parse_kernel("bicubic")
    from diffusers_ext.rewards import soft_spatial_max

    names = ("score@rm0", f"score@rm{n}", f"pdm_penalty@rm{n}", "fidelity_lr", "fidelity_l1")
    gnorm = {k: [] for k in names}
    scales = {m: TermScales(m, momentum=0.9) for m in ("abs", "std")}
    for b in range(args.batches):
        lr, hr = data.batch(args.batch, b)
        terms = {}

        def grad_of(value: torch.Tensor) -> float:
            g = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            return float(torch.sqrt(sum((x.float() ** 2).sum() for x in g if x is not None)))

        out = policy(lr)
        img = out["images"].float()
        terms["score@rm0"] = rm(img, stage=0).score
        o = rm(img, stage=n)
        terms[f"score@rm{n}"] = o.score
        terms[f"pdm_penalty@rm{n}"] = soft_spatial_max(o.pdm, "topk", 0.01)
        terms["fidelity_lr"] = fidelity_loss("lr", out, policy, lr=lr, kernel=kernel)
        terms["fidelity_l1"] = fidelity_loss("l1", out, policy, hr=hr)
        for k, v in terms.items():
            gnorm[k].append(grad_of(v.mean()))
            for s in scales.values():
                s.observe(k, batch_stats(v))
    mean = {k: sum(v) / len(v) for k, v in gnorm.items()}
    rec = {"batches": args.batches, "batch": args.batch, "hr_size": args.hr_size, "grad_norm": mean,
           "scale": {m: s.scales() for m, s in scales.items()}}

    def shares(weights: dict[str, float]) -> dict[str, float]:
        g = {k: weights[k] * mean[k] for k in weights}
        tot = sum(g.values())
        return {k: round(v / tot, 4) for k, v in g.items()}

    # the stage-N objective with LR consistency, at all lambdas 1 (gradient norms add as an upper bound)
    keys = (f"score@rm{n}", f"pdm_penalty@rm{n}", "fidelity_lr")
    rec["share_raw"] = shares({keys[0]: 1e-3, keys[1]: 1e-3, keys[2]: 1.0})
    for m, s in scales.items():
        sc = s.scales()
        rec[f"share_{m}"] = shares({k: 1.0 / sc[k] for k in keys})
    print(json.dumps(rec, indent=1))
    return rec


if __name__ == "__main__":
    main()
