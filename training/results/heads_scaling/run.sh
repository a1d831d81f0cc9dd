#!/usr/bin/env bash
# Scaling curves of the v6 training step (training/fit_heads.py, the F recipe; issue 24 item 3): the score heads
# at 1x, 3x and 10x the steps on the same data, and on a quarter and a half of the train photos (all their
# sets) against a quarter and a half of the sets drawn from every photo (as many sets, more photos): does
# the whole-image ranking of photos never trained on grow with steps, with sets, or with photos?
# Data: the prefixes built at the top of training/results/adv_negatives/run.sh (700 train sets, 60 val sets);
# runs/F5_model: a copy of diffusers_ext/default. Every step resumes (skipped when its output exists).
# Usage: bash training/results/heads_scaling/run.sh [RUN...] (default: all; about 80 minutes on 2 cores);
# the table of the finished runs goes to training/results/heads_scaling/results.md.
set -e
R=runs/heads_scaling
C="--init runs/F5_model --versions data/versions_v6 --versions data/versions_v6_hack1 --versions data/versions_v6_hack2
   --versions_val data/versions_v6val --fgr data/fgr_v4 --teacher lpips_alex --learning_rate 2e-4
   --input_dropout 0.2 --lambda_rank 2 --raw_floor -1 --standardize --reinit --fgr_items 600 --fgr_val_items 300
   --lambda_consistency 0 --cache $R/cache"
fit() { [ -f $R/$1/result.json ] || python -m training.fit_heads $C "${@:2}" --output_dir $R/$1; }
ev() { [ -f $R/wi_$1.json ] || python -m training.evaluate_whole_image --model $R/$1/model --out $R/wi_$1; }
declare -A ARGS=([steps1x]="--steps 3000" [steps3x]="--steps 9000" [steps10x]="--steps 30000"
                 [photos25]="--steps 3000 --photo_fraction 0.25" [sets25]="--steps 3000 --set_fraction 0.25"
                 [photos50]="--steps 3000 --photo_fraction 0.5" [sets50]="--steps 3000 --set_fraction 0.5")
# steps1x = runs/advab/B0 of training/results/adv_negatives (same data and seed)
for n in ${@:-steps1x steps3x steps10x photos25 sets25 photos50 sets50}; do
  fit $n ${ARGS[$n]}; ev $n
done
python - "$R" > training/results/heads_scaling/results.md <<'PY'
import json, sys
from pathlib import Path
R = Path(sys.argv[1])
print("| run | steps | train sets | train photos | val clean on top (s5) | val pair agree (s5) | "
      "bench clean on top | tau LPIPS-VGG | tau DISTS | SR below clean | fit s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for run in ("steps1x", "steps3x", "steps10x", "photos25", "sets25", "photos50", "sets50"):
    if not ((R / run / "result.json").is_file() and (R / f"wi_{run}.json").is_file()):
        continue
    r, w = json.loads((R / run / "result.json").read_text()), json.loads((R / f"wi_{run}.json").read_text())
    h = r["history"][-1]
    print(f"| {run} | {r['args']['steps']} | {r['train_sets']} | {r['train_photos']} | {h['s5/clean_top']:.3f} | "
          f"{h['s5/pair_agree']:.3f} | {w['clean_top']:.3f} | {w['tau_lpips_vgg']:.3f} | {w['tau_dists']:.3f} | "
          f"{w['sr_below_clean']:.3f} | {r['seconds']:.0f} |")
PY
