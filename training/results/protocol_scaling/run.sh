#!/usr/bin/env bash
# Scaling curve of the protocol model (issue 24 item 3): the reward-model recipe without the 9 held-out defect
# families of the generalization benchmark, at 1x, 3x and 10x the curriculum's steps, on the same 7,000-item FGR
# build (data seed 1, the judge's: data/fgr_v4_judge, built by the first run if missing), one thread, then the
# benchmark on its unseen and seen families; and 1x with --freeze_bn --freeze_levels 2 (the trainer's 1.36x
# option: what it costs). Usage: bash training/results/protocol_scaling/run.sh [RUN...] (default: all).
# 1x: about 15 minutes on one core; 3x and 10x in proportion. Every step resumes (skipped when its output exists).
set -e
R=runs/protocol_scaling
OUT=training/results/protocol_scaling
D="--seed 1 --data_seed 1 --sources all --train_items 7000 --data data/fgr_v4_judge --exclude_families protocol
   --joint_steps 0 --no-teacher_heads --num_threads 1"
declare -A STEPS=([1x]=400,80,80,100,120,150 [3x]=1200,240,240,300,360,450 [10x]=4000,800,800,1000,1200,1500
                  [1x_freeze]=400,80,80,100,120,150)
declare -A EXTRA=([1x_freeze]="--train_arg=--freeze_bn --train_arg=--freeze_levels=2")
mkdir -p $OUT
for n in ${@:-1x 3x 10x 1x_freeze}; do
  [ -f $R/$n/final/config.json ] || python -m training.train_default $D --steps ${STEPS[$n]} ${EXTRA[$n]} \
    --runs $R/$n --export $R/$n/final --results $R/$n/results
  [ -f $R/gen_$n/generalization.json ] || python -m training.evaluate_generalization --protocol $R/$n/final \
    --skip_shipped --threads 1 --out $R/gen_$n
  cp $R/gen_$n/generalization.md $OUT/generalization_$n.md
  cp $R/$n/results/default_model.md $OUT/test_split_$n.md
done
