"""Where one ``training/train_reward.py`` step spends its time, by part of the network: the encoder's
forward and backward, the decoder levels', and the whole step (data, robustness inputs, losses), each
timed on its own (the parts overlap in memory traffic, so they need not add up to the step).

    python -m benchmarks.profile_train_step --data data/fgr_v4 [--repeats 6] [-- <train_reward flags>]

The step is the trainer's own (``stage_loss`` on a real batch of ``--data``) with the v5 recipe's
stage-0 settings (batch 8, 128 px crops, dense maps, consistency 0.1); flags after ``--`` change them
(e.g. ``-- --freeze_bn --freeze_levels 2``). Medians over ``--repeats`` calls after one warm-up.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Optional

import torch


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv: Optional[list[str]] = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="an FGR folder (training/data/build_fgr.py)")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--num_threads", type=int, default=None)
    ap.add_argument("train_args", nargs="*", help="train_reward flags (after --)")
    args = ap.parse_args(argv)
    from training import train_reward as tr
    from training.data.fgr_dataset import FGRDataset, collate, step_batches

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    targs = tr.parse_args(["--data", args.data, "--stage", "0", "--output_dir", ".", "--batch_size", "8",
                           "--crop", "128", "--lambda_consistency", "0.1", "--stage0_dense_weight", "1.0",
                           *args.train_args])
    model = tr.build_model(targs)
    model.train()
    tr.keep_frozen_statistics(model, targs)
    data = FGRDataset(targs.data, "train", crop=targs.crop, augment=True)
    batches = step_batches(len(data), targs.batch_size, targs.seed)
    step = [0]

    def batch() -> dict[str, torch.Tensor]:
        b = collate([data[k] for k in next(batches)])
        b.update(tr.robustness_inputs(model, b, targs, step[0]))
        step[0] += 1
        return b

    x = tr._stack(batch())

    def encoder() -> None:
        sum(f.mean() for f in model.encode(x)).backward()

    feats = [f.detach() for f in model.encode(x)]

    def decoder() -> None:
        sum(lg.mean() for lg in model.decode_all_logits(feats)).backward()

    def whole_step() -> None:
        tr.stage_loss(model, batch(), targs)["loss"].backward()

    out = {"images per step": float(x.shape[0]),
           "data + robustness inputs (s)": median_seconds(batch, args.repeats),
           "encoder forward + backward (s)": median_seconds(encoder, args.repeats),
           "decoder levels forward + backward (s)": median_seconds(decoder, args.repeats),
           "whole step forward + backward (s)": median_seconds(whole_step, args.repeats)}
    for k, v in out.items():
        print(f"{k}: {v:.3f}")
    model.zero_grad(set_to_none=True)
    return out


if __name__ == "__main__":
    main()
