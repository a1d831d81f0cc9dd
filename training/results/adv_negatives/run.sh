#!/usr/bin/env bash
# Adversarial hard negatives on the v6 score heads (issue 25, item 2): the A/B of docs/reward_model_v6.md.
# Data (prefixes of the documented builds; items depend only on (seed, split, index)):
#   python -m training.data.build_fgr --out data/fgr_v4 --train 600 --val 300 --test 0 --hr-size 192 --sources all
#   H=benchmarks/hacked_upscalers/realesr-animevideov3-x4-hacked-by
#   python -m training.data.versions --out data/versions_v6val --train 0 --val 60 --versions-per-set 12 --policy=hack_v5=$H-v5.safetensors
#   python -m training.data.versions --out data/versions_v6 --train 400 --val 0 --metrics lpips_alex --versions-per-set 12 --policy=hack_v5=$H-v5.safetensors
#   python -m training.data.versions --out data/versions_v6_hack1 --train 150 --val 0 --seed 1 --metrics lpips_alex --versions-per-set 11 --policy=hack_v5=$H-v5.safetensors --policy=hack_v6b=$H-v6-candidate.safetensors
#   python -m training.data.versions --out data/versions_v6_hack2 --train 150 --val 0 --seed 2 --metrics lpips_alex --versions-per-set 11 --policy=hack_v5=$H-v5.safetensors --policy=hack_v6=$H-v6.safetensors
# runs/F5_model: a copy of diffusers_ext/default (F5). Every step resumes (skipped when its output exists).
set -e
R=runs/advab
C="--init runs/F5_model --versions data/versions_v6 --versions data/versions_v6_hack1 --versions data/versions_v6_hack2
   --versions_val data/versions_v6val --fgr data/fgr_v4 --teacher lpips_alex --steps 3000 --learning_rate 2e-4
   --input_dropout 0.2 --lambda_rank 2 --raw_floor -1 --standardize --reinit --fgr_items 600 --fgr_val_items 300
   --cache $R/cache"
ADV="--adv_sets 150 --adv_per_set 2 --adv_steps 5"
fit() { [ -f $R/$1/result.json ] || python -m training.fit_heads $C "${@:2}" --output_dir $R/$1; }
ev() {
  [ -f $R/eval_$1/generalization.json ] || python -m training.evaluate_generalization --model $R/$1/model --out $R/eval_$1
  [ -f $R/wi_$1.json ] || python -m training.evaluate_whole_image --model $R/$1/model --out $R/wi_$1
}
up() { python -c "import json; print(json.load(open('$R/hack_$1/result.json'))['upscaler'])"; }
hack() {  # pure ReFL against $1 (the 300-step command), its outputs on 40 test crops scored by $1
  [ -f $R/hack_$1/result.json ] || python -m training.ccl_lora --policy feedforward \
    --ccl_config training/configs/ccl_default.yaml --max_train_steps 300 --train_batch_size 4 --hr_size 128 \
    --learning_rate 2e-4 --lora_rank 8 --fidelity none --pretrained_model realesr-animevideov3-x4 --seed 0 \
    --reward_model $R/$1/model --output_dir $R/hack_$1
  [ -f $R/selfhack_$1.json ] || python -m training.evaluate_whole_image --model $R/$1/model \
    --bench data/whole_image_bench_selfhack_$1 --networks "" --policy=hack_$1=$(up $1) --out $R/selfhack_$1
}
fit B0 --lambda_consistency 0; ev B0                                   # the F recipe on these folders
fit A1 --lambda_consistency 0 $ADV --adv_model $R/B0/model; ev A1      # round 1: attacks on B0
fit A2 --lambda_consistency 0 $ADV --adv_model $R/B0/model --adv_model $R/A1/model; ev A2
fit B1 --lambda_consistency 0.5; ev B1                                 # the consistency term instead
fit A3 --lambda_consistency 0 $ADV --adv_model $R/B0/model --adv_model $R/A1/model --adv_model $R/A2/model; ev A3
hack B0; hack A3
# Two hack rounds on top (training/hack_rounds.py's label + retrain steps): every hack so far in 150 new
# sets per round, both recipes refitted with them (the adversarial arm also attacks A3r), each hacked again.
V=data/versions_v6_advround
V2=data/versions_v6_advround2
python -m training.data.versions --out $V --train 150 --val 0 --seed 1200 --metrics lpips_alex \
  --versions-per-set 11 --policy=hack_B0=$(up B0) --policy=hack_A3=$(up A3)
fit B0r --lambda_consistency 0 --versions $V
fit A3r --lambda_consistency 0 --versions $V $ADV --adv_model $R/B0/model --adv_model $R/A1/model --adv_model $R/A2/model
for M in B0r A3r; do ev $M; hack $M; done
python -m training.data.versions --out $V2 --train 150 --val 0 --seed 1201 --metrics lpips_alex \
  --versions-per-set 9 --policy=hack_B0=$(up B0) --policy=hack_A3=$(up A3) --policy=hack_B0r=$(up B0r) \
  --policy=hack_A3r=$(up A3r)
fit B0rr --lambda_consistency 0 --versions $V --versions $V2
fit A3rr --lambda_consistency 0 --versions $V --versions $V2 $ADV --adv_model $R/B0/model --adv_model $R/A1/model \
  --adv_model $R/A2/model --adv_model $R/A3r/model
for M in B0rr A3rr; do ev $M; hack $M; done
