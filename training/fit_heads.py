"""Distil the perceptual teacher into the score heads of a trained reward model (reward model v6 recipe).

    python -m training.fit_heads --init data/models/v5 --versions data/versions_v6 --fgr data/fgr_v4 \
        --output_dir runs/v6_heads

The encoder and the map decoder stay frozen, so every map (and the map benchmark's AUROC) is
exactly the initial model's; only the score heads of every stage 0..N are trained, on inputs computed
once and cached (the pooled deepest feature, dimmed by each stage's map, and the map statistics: what
:meth:`FinPercepRM.score_from` reads), so thousands of steps take seconds. The objective:

- whole-image order and scale from the teacher (:mod:`training.whole_image`): the versions of one
  crop ordered by their LPIPS-VGG / DISTS distance to the clean crop, on one scale across photos;
- the FGR triplets' ranking ``S_sr < S_syn < S_gt`` (``train_reward.ranking_loss``) and garbage images
  below the damaged photos (``--margin_garbage``), so the region-level behaviour is kept;
- consistency: the score of an invisible copy (noise <= 2/255) of a version equals its own;
- adversarial hard negatives (``--adv_sets``): versions of some sets attacked inside an L-inf ball
  (``--adv_eps``, PGD of ``training/robustness.attack_score``) to *raise* the score of each ``--adv_model``,
  labelled with their own teacher distance and ordered among the set's versions like any other;
- every stage on the same scale (each is trained toward the same targets).

Then the score is calibrated per stage on the FGR validation split (``training/calibration.py``) and
the model is written to ``<output_dir>/model`` (atomically), with the validation figures in
``<output_dir>/result.json``.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffusers_ext.models.finpercep_rm import FinPercepRM
from training.calibration import fit_calibration
from training.checkpointing import atomic_write_dir
from training.data.fgr_dataset import FGRDataset
from training.robustness import attack_score, garbage_batch, imperceptible
from training.train_reward import ranking_loss
from training.whole_image import OrderConfig, VersionSets, order_figures, order_loss, parse_teacher

logger = logging.getLogger("fit_heads")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", required=True, help="the trained reward model whose score heads are refitted")
    p.add_argument("--versions", type=Path, action="append", required=True,
                   help="version-set folder (training/data/versions.py); repeatable (the folders' sets must hold "
                        "the same number of versions)")
    p.add_argument("--fgr", type=Path, required=True, help="FGR folder (triplets, and the calibration's val split)")
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--versions_val", type=Path, default=None,
                   help="version-set folder of the validation split (default: --versions)")
    p.add_argument("--teacher", default="lpips_vgg+dists", help="teacher metrics and weights (training/whole_image.py)")
    p.add_argument("--val_teacher", default="lpips_vgg+dists", help="the teacher the validation figures are stated in")
    p.add_argument("--fgr_items", type=int, default=3000, help="FGR train triplets used")
    p.add_argument("--fgr_val_items", type=int, default=300, help="FGR val triplets (figures and the calibration)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch_versions", type=int, default=16, help="version sets per step")
    p.add_argument("--batch_triplets", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    p.add_argument("--input_dropout", type=float, default=0.0,
                   help="dropout on the cached head inputs while training (a regularizer: the sets are few)")
    p.add_argument("--reinit", action="store_true", help="start the heads from random instead of the --init heads")
    p.add_argument("--score_features", choices=["top", "multilevel"], default=None,
                   help="change what the heads read (FinPercepRM score_features; implies --reinit); default: keep --init's")
    p.add_argument("--standardize", action="store_true",
                   help="train the heads on standardized inputs (train-set mean and std per stage and column), "
                        "folded into the heads' first layer when saved")
    p.add_argument("--slope", type=float, default=1.5, help="raw score per unit of teacher distance")
    p.add_argument("--min_gap", type=float, default=0.01)
    p.add_argument("--lambda_order", type=float, default=1.0)
    p.add_argument("--lambda_cal", type=float, default=0.5)
    p.add_argument("--lambda_rank", type=float, default=0.5, help="FGR triplet ranking")
    p.add_argument("--margin", type=float, default=0.1, help="the triplets' margins m1 = m2")
    p.add_argument("--lambda_garbage", type=float, default=0.5)
    p.add_argument("--margin_garbage", type=float, default=0.3)
    p.add_argument("--raw_floor", type=float, default=-1.0,
                   help="no raw score below this (garbage included): without it the heads extrapolate garbage to "
                        "raw -60, a calibrated 0.0 and huge RL gradients")
    p.add_argument("--garbage_items", type=int, default=512)
    p.add_argument("--lambda_consistency", type=float, default=0.5)
    g = p.add_argument_group("adversarial hard negatives: attacks on a reward, ordered by the teacher")
    g.add_argument("--adv_sets", type=int, default=0, help="train version sets given adversarial versions (0 = off)")
    g.add_argument("--adv_per_set", type=int, default=2, help="versions of each such set attacked (not the clean crop)")
    g.add_argument("--adv_model", action="append", default=None,
                   help="a reward model attacked, at its default stage (default: --init); repeatable: each model's "
                        "attacks are added (after one fit, add its output model: a second round)")
    g.add_argument("--adv_eps", type=float, default=2.0 / 255, help="L-inf budget of the attack (images in [0, 1])")
    g.add_argument("--adv_steps", type=int, default=5, help="PGD steps (the benchmark's attack takes 10)")
    g.add_argument("--lambda_adv", type=float, default=1.0, help="weight of the order loss of the sets with attacks")
    g = p.add_argument_group("data scaling: train on a seeded share of the train version sets")
    g.add_argument("--photo_fraction", type=float, default=1.0,
                   help="keep only the sets of this share of the train photos (all their sets)")
    g.add_argument("--set_fraction", type=float, default=1.0,
                   help="keep this share of the (remaining) sets, drawn from every photo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=None)
    p.add_argument("--cache", type=Path, default=None, help="feature cache folder (default <output_dir>/cache)")
    return p.parse_args(argv)


def stage_inputs(model: FinPercepRM, feats: list[torch.Tensor], size: tuple[int, int]
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``[B, N + 1, C + 2]``: what each stage's score head reads, from the encoder features of images
    of ``size``: :meth:`FinPercepRM.pooled` (stage 0: plain; stage k: the deepest feature dimmed by the
    stage-k map) and the map's statistics (zeros at stage 0); and the map logits of stages 1..N.
    Differentiable: :func:`stage_scores` of it are the model's raw scores of every stage."""
    logits = model.decode_all_logits(feats)
    pooled = model.pooled(feats, None, size)
    rows = [torch.cat([pooled, pooled.new_zeros(len(pooled), 2)], 1)]
    for lg in logits:
        pdm = model.logits_to_map(lg, size)
        rows.append(torch.cat([model.pooled(feats, pdm, size), model.map_stats(pdm)], 1))
    return torch.stack(rows, 1), logits


@torch.no_grad()
def head_inputs(model: FinPercepRM, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """:func:`stage_inputs` of images ``x`` (``Bx3xHxW``), float32, in batches of ``batch``."""
    out = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        out.append(stage_inputs(model, model.encode(xb), tuple(xb.shape[-2:]))[0].float())
    return torch.cat(out)


def stage_scores(model: FinPercepRM, inputs: torch.Tensor) -> torch.Tensor:
    """``[..., N + 1]`` raw scores of every stage from :func:`stage_inputs` / :func:`head_inputs`."""
    c = inputs.shape[-1] - 2
    cols = [model.score_heads[0](inputs[..., 0, :c])]
    for k in range(1, model.num_stages + 1):
        x = inputs[..., k, :] if model.config.score_map_stats else inputs[..., k, :c]
        cols.append(model.score_heads[k](x))
    return torch.stack(cols, -1)


def with_score_features(model: FinPercepRM, score_features: str) -> FinPercepRM:
    """A copy of ``model`` whose score heads read ``score_features`` (new, untrained heads; the encoder,
    decoder and every map are ``model``'s)."""
    new = FinPercepRM.from_config(model.config, score_features=score_features).eval()
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("score_heads.")}
    missing, unexpected = new.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith("score_heads.") for k in missing):
        raise RuntimeError(f"could not carry the encoder and decoder over: {missing} {unexpected}")
    return new


@torch.no_grad()
def fold_standardization(model: FinPercepRM, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Fold ``(x - mean) / std`` (``[N + 1, F]``, per stage and head-input column, as in
    :func:`head_inputs`) into each score head's first layer, so the heads read raw inputs."""
    for k, head in enumerate(model.score_heads):
        lin = head.mlp[0]
        n = lin.in_features
        mu, sd = mean[k, :n].to(lin.weight), std[k, :n].to(lin.weight)
        lin.weight.div_(sd)
        lin.bias.sub_(lin.weight @ mu)


def _cached(path: Path, make) -> torch.Tensor:
    """``make()``, saved to ``path`` (atomically) the first time and read from it afterwards."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    t = make()
    tmp = path.with_suffix(".tmp")
    torch.save(t, tmp)
    tmp.replace(path)
    return t


def _cached_rows(folder: Path, n: int, row, desc: str, chunk: int = 25, source: Optional[str] = None) -> torch.Tensor:
    """``torch.stack([row(i) for i in range(n)])`` (a tuple of stacks for rows of tuples), computed in
    chunks of ``chunk`` rows that are saved under ``folder`` as they finish, so an interrupted
    extraction resumes where it stopped.
    ``source`` (what the rows are of) is recorded in the folder; another source is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    if source is not None:
        mark = folder / "source.txt"
        if mark.is_file() and mark.read_text().strip() != source:
            raise ValueError(f"the feature cache {folder} holds features of {mark.read_text().strip()}, not of {source}: "
                             "pass another --cache, or give the version-set folder a name of its own")
        mark.write_text(source + "\n")
    parts = []
    for start in tqdm(range(0, n, chunk), desc=desc, leave=False):
        path = folder / f"{start:06d}_{min(start + chunk, n):06d}.pt"
        parts.append(_cached(path, lambda: _stack([row(i) for i in range(start, min(start + chunk, n))])))
    return tuple(map(torch.cat, zip(*parts))) if isinstance(parts[0], tuple) else torch.cat(parts)


def _stack(rows: list) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``torch.stack`` of tensor rows, or of each field of tuple rows."""
    return tuple(map(torch.stack, zip(*rows))) if isinstance(rows[0], tuple) else torch.stack(rows)


def train_subset(photos: Sequence[str], photo_fraction: float, set_fraction: float, seed: int) -> np.ndarray:
    """Indices of the train sets kept for a data-scaling run: the sets of a seeded ``photo_fraction`` of the
    distinct ``photos`` (one id per set), then a seeded ``set_fraction`` of those; every index with 1, 1."""
    for name, f in (("--photo_fraction", photo_fraction), ("--set_fraction", set_fraction)):
        if not 0 < f <= 1:
            raise ValueError(f"{name} {f}: choose a share in (0, 1]")
    rng = np.random.default_rng([seed, 31])
    ids = sorted(set(photos))
    chosen = set(rng.permutation(ids)[: max(1, round(photo_fraction * len(ids)))])
    keep = np.array([i for i, ph in enumerate(photos) if ph in chosen])
    keep = np.sort(rng.permutation(keep)[: max(1, round(set_fraction * len(keep)))])
    return keep


def version_features(model: FinPercepRM, sets: VersionSets, cache: Path, name: str,
                     noisy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Head inputs ``[n, K, N+1, C+2]`` and teacher distances ``[n, K]`` of every version set
    (with ``noisy``: of an invisible copy of each version, noise std <= 2/255, seeded per set)."""
    def row(i: int) -> torch.Tensor:
        x = torch.from_numpy(sets.images(i)).permute(0, 3, 1, 2).float().div(255)
        if noisy:
            x = imperceptible(x, torch.Generator().manual_seed(1234 + i), 2.0 / 255)
        return head_inputs(model, x)
    feats = _cached_rows(cache / name, len(sets), row, f"features {name}", source=f"{sets.root.resolve()} (noisy={noisy})")
    dist = torch.from_numpy(np.stack([sets.distances(i) for i in range(len(sets))]))
    return feats, dist


def adversarial_features(attacked_path: str, model: FinPercepRM, sets: list[VersionSets], chosen: np.ndarray,
                         args: argparse.Namespace, cache: Path, teacher: dict[str, float], salt: int = 0
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head inputs ``[n, A, N+1, C+2]``, teacher distances ``[n, A]`` and the attacked version's index
    in its set ``[n, A]`` of ``A = --adv_per_set`` attacked versions of each chosen train set
    (``chosen``: indices into the sets of every folder in turn). Each is an L-inf PGD attack
    (:func:`training.robustness.attack_score`) that raises the raw score of the model at
    ``attacked_path`` at its default stage; its label is its own teacher distance to the clean crop, so
    the order loss puts it where the teacher puts it, whatever the attacked reward thought. ``salt``
    draws other versions to attack (one per attacked model)."""
    from training.data.versions import Teacher

    owners = [(s, i) for s in sets for i in range(len(s))]

    @functools.cache
    def load() -> tuple[FinPercepRM, Teacher]:  # only when a chunk is not cached yet
        return FinPercepRM.from_pretrained(attacked_path).eval().requires_grad_(False), Teacher(list(teacher))

    def row(j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attacked, metrics = load()
        s, i = owners[int(chosen[j])]
        imgs = torch.from_numpy(s.images(i)).permute(0, 3, 1, 2).float().div(255)
        rng = np.random.default_rng([args.seed, 31, salt, int(chosen[j])])
        picks = 1 + rng.choice(len(imgs) - 1, size=min(args.adv_per_set, len(imgs) - 1), replace=False)
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
        adv = attack_score(lambda x: attacked(x).raw_score, imgs[picks], args.adv_eps, args.adv_steps, gen)
        d = metrics.distances(adv, imgs[:1])
        return head_inputs(model, adv), sum(w * d[k] for k, w in teacher.items()), torch.from_numpy(picks)
    source = (f"{[str(s.root.resolve()) for s in sets]} attacked: {Path(attacked_path).resolve()} "
              f"eps={args.adv_eps:g} steps={args.adv_steps} per_set={args.adv_per_set} seed={args.seed},{salt} "
              f"teacher={teacher}")
    name = f"adv_{len(chosen)}x{args.adv_per_set}_{hashlib.sha1(source.encode()).hexdigest()[:10]}"
    return _cached_rows(cache / name, len(chosen), row, "adversarial versions", chunk=10, source=source)


def fgr_features(model: FinPercepRM, data: FGRDataset, cache: Path, name: str) -> torch.Tensor:
    """Head inputs ``[n, 3, N+1, C+2]`` of the FGR items' ``gt``, ``syn``, ``sr`` (whole items)."""
    def row(i: int) -> torch.Tensor:
        it = data[i]
        return head_inputs(model, torch.stack([it["gt"], it["syn"], it["sr"]]))
    return _cached_rows(cache / name, len(data), row, f"features {name}", chunk=100)


def _cache_name(folder: Path, split: str) -> str:
    """The feature cache of one version-set folder and split."""
    return f"{Path(folder).name}_{split}"


def evaluate(model: FinPercepRM, feats: torch.Tensor, dist: torch.Tensor,
             fgr: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Per stage: the version order figures (clean on top, pair agreement with the teacher) and, on
    FGR features, the triplet and pair accuracy."""
    with torch.no_grad():
        s = stage_scores(model, feats).numpy()           # [n, K, S]
        t = dist.numpy()
        out: dict[str, float] = {}
        for k in range(s.shape[-1]):
            for key, v in order_figures(s[..., k], t).items():
                out[f"s{k}/{key}"] = v
        if fgr is not None:
            f = stage_scores(model, fgr).numpy()          # [n, 3, S]: gt, syn, sr
            for k in range(f.shape[-1]):
                gt, syn, sr = f[:, 0, k], f[:, 1, k], f[:, 2, k]
                out[f"s{k}/triplet_acc"] = float(np.mean((gt > syn) & (syn > sr)))
                out[f"s{k}/pair_acc"] = float(np.mean(gt > sr))
    return out


def adversarial_figures(model: FinPercepRM, v_tr: torch.Tensor, d_tr: torch.Tensor,
                        adv: tuple[torch.Tensor, torch.Tensor, torch.Tensor], chosen: torch.Tensor) -> dict[str, float]:
    """At the model's default stage, on the attacked train versions: the share scored above their set's
    clean crop, the share of their pairs with the set's versions ordered as the teacher orders them, and
    their mean raw gain over the version they were made from."""
    k = model.stage
    with torch.no_grad():
        s_set = stage_scores(model, v_tr[chosen])[..., k]            # [n, K]
        s_adv = stage_scores(model, adv[0])[..., k]                   # [n, A]
    src = torch.gather(s_set, 1, adv[2])
    dt = d_tr[chosen][:, None, :] - adv[1][:, :, None]                # [n, A, K]: t_version - t_adv
    ds = s_set[:, None, :] - s_adv[:, :, None]
    keep = dt.abs() > 1e-6
    return {"adv_above_clean": float((s_adv > s_set[:, :1]).float().mean()),
            "adv_pair_agree": float(((torch.sign(ds) == -torch.sign(dt)) & keep).sum() / keep.sum().clamp_min(1)),
            "adv_gain": float((s_adv - src).mean())}


def model_card(args: argparse.Namespace, before: dict, after: dict, n_sets: int, k: int, last: int) -> str:
    """The model card of the refitted model: what it is, how it was made, the validation figures."""
    rows = "\n".join(f"| {key} | {before.get(key, float('nan')):.3f} | {after.get(key, float('nan')):.3f} |"
                      for key in (f"s{last}/clean_top", f"s{last}/pair_agree", f"s{last}/triplet_acc",
                                  "s0/clean_top", "s0/pair_agree", "s0/triplet_acc"))
    folders = " ".join(f"--versions {f}" for f in args.versions)
    heads = ""
    if args.score_features:
        heads += f" --score_features {args.score_features}"
    if args.standardize:
        heads += " --standardize"
    if args.photo_fraction < 1 or args.set_fraction < 1:
        heads += f" --photo_fraction {args.photo_fraction:g} --set_fraction {args.set_fraction:g}"
    if args.adv_sets:
        heads += (f" --adv_sets {args.adv_sets} --adv_per_set {args.adv_per_set}"
                  + "".join(f" --adv_model {m}" for m in args.adv_model or [args.init])
                  + f" --adv_eps {args.adv_eps:g} --adv_steps {args.adv_steps} --lambda_adv {args.lambda_adv:g}")
    reads = ("the pooled deepest feature and the channel means and standard deviations of every shallower encoder "
             "level (`score_features: multilevel`)" if args.score_features == "multilevel" else "the pooled deepest feature")
    return f"""---
library_name: diffusers
license: apache-2.0
tags: [image-quality-assessment, reward-model, super-resolution, finpercep]
---
# FinPercep-RM with teacher-distilled score heads

The reward model `{args.init}` with the score heads of every stage 0..{last} (reading {reads}) refitted on whole-image version
sets ordered by a full-reference perceptual teacher (`{args.teacher}`: LPIPS / DISTS distance to the clean
photo), the encoder and every map frozen (so the maps are exactly `{args.init}`'s). Calibrated per stage on
the FGR validation split (`score_calibration`: clean photos about 0.9, heavily damaged images about 0.1).

Made by `python -m training.fit_heads --init {args.init} {folders} --fgr {args.fgr} --teacher {args.teacher}
--steps {args.steps} --learning_rate {args.learning_rate:g} --input_dropout {args.input_dropout:g}
--lambda_rank {args.lambda_rank:g} --lambda_consistency {args.lambda_consistency:g} --raw_floor {args.raw_floor:g}{heads}
--fgr_items {args.fgr_items} --fgr_val_items {args.fgr_val_items}`: {n_sets} version sets of {k} versions (the clean crop, real SR networks,
classical upscalers, filters, defect operators, the outputs of upscalers that hacked earlier rewards), plus
the FGR triplets' ranking and garbage images. Validation sets (other photos), teacher `{args.val_teacher}`:

| figure | before | after |
|---|---|---|
{rows}

`clean_top`: share of validation sets whose clean crop scores above all its versions (including subtle
ones); `pair_agree`: share of version pairs ordered as the teacher orders them; `triplet_acc`: FGR
validation triplets with S_gt > S_syn > S_sr.
"""


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    cache = args.cache or args.output_dir / "cache"  # one cache per --init model: features depend on it
    cache.mkdir(parents=True, exist_ok=True)
    model = FinPercepRM.from_pretrained(args.init).eval()
    if args.score_features and args.score_features != model.config.get("score_features", "top"):
        model = with_score_features(model, args.score_features)
        args.reinit = True
    model.requires_grad_(False)
    teacher = parse_teacher(args.teacher)
    tr_sets = [VersionSets(folder, "train", teacher) for folder in args.versions]
    va_sets = VersionSets(args.versions_val or args.versions[0], "val", parse_teacher(args.val_teacher))
    n_train = sum(len(sets) for sets in tr_sets)
    if args.adv_sets > n_train or args.adv_sets < 0:
        raise ValueError(f"--adv_sets {args.adv_sets}: choose 0 (off) up to the {n_train} train version sets")
    if args.adv_sets and args.adv_per_set < 1:
        raise ValueError(f"--adv_per_set {args.adv_per_set}: attack at least one version per set")
    photos = [r["photo"] for sets in tr_sets for r in sets.records]
    keep = train_subset(photos, args.photo_fraction, args.set_fraction, args.seed)
    if args.adv_sets and len(keep) < n_train:
        raise ValueError("--adv_sets with --photo_fraction/--set_fraction below 1: not supported; use one or the other")
    fgr_tr = FGRDataset(args.fgr, "train", limit_index=args.fgr_items)
    fgr_va = FGRDataset(args.fgr, "val", limit=args.fgr_val_items)
    parts = [version_features(model, sets, cache, _cache_name(folder, "train"))
             for folder, sets in zip(args.versions, tr_sets)]
    if len({p[0].shape[1] for p in parts}) > 1:
        raise ValueError(f"the --versions folders hold sets of different sizes ({[p[0].shape[1] for p in parts]} "
                         "versions): build them with the same --versions-per-set + policies count")
    v_tr, d_tr = torch.cat([p[0] for p in parts])[keep], torch.cat([p[1] for p in parts])[keep]
    v_nz = (torch.cat([version_features(model, sets, cache, _cache_name(folder, "train_noisy"), noisy=True)[0]
                       for folder, sets in zip(args.versions, tr_sets)])[keep] if args.lambda_consistency > 0 else None)
    n_photos = len({photos[i] for i in keep})
    logger.info("train sets: %d of %d, from %d of %d photos", len(keep), n_train, n_photos, len(set(photos)))
    v_va, d_va = version_features(model, va_sets, cache, _cache_name(args.versions_val or args.versions[0], "val"))
    if v_tr.shape[1] != v_va.shape[1]:
        logger.info("train sets hold %d versions, validation sets %d", v_tr.shape[1], v_va.shape[1])
    f_tr = fgr_features(model, fgr_tr, cache, "fgr_train")
    f_va = fgr_features(model, fgr_va, cache, "fgr_val")
    size = int(fgr_tr[0]["gt"].shape[-1])
    g_tr = _cached(cache / f"garbage{args.garbage_items}_{size}.pt",
                   lambda: head_inputs(model, garbage_batch(args.garbage_items, size, args.seed)))
    adv, chosen = None, None
    if args.adv_sets > 0:
        chosen = torch.from_numpy(np.sort(np.random.default_rng([args.seed, 30]).choice(len(v_tr), args.adv_sets,
                                                                                        replace=False)))
        rounds = [adversarial_features(m, model, tr_sets, chosen.numpy(), args, cache, teacher, salt=i)
                  for i, m in enumerate(args.adv_model or [args.init])]
        adv = tuple(torch.cat(parts, 1) for parts in zip(*rounds))   # every attacked model's versions of a set
    logger.info("features ready in %.0f s: %d version sets x %d versions, %d FGR items, %d garbage, %d attacked",
                time.time() - t0, v_tr.shape[0], v_tr.shape[1], f_tr.shape[0], g_tr.shape[0],
                0 if adv is None else adv[0].shape[0] * adv[0].shape[1])
    before = evaluate(model, v_va, d_va, f_va)
    if adv is not None:
        before.update(adversarial_figures(model, v_tr, d_tr, adv, chosen))
    last = model.num_stages
    logger.info("before: val s%d clean_top %.3f pair_agree %.3f triplet %.3f | s0 %.3f %.3f", last,
                before[f"s{last}/clean_top"], before[f"s{last}/pair_agree"], before[f"s{last}/triplet_acc"],
                before["s0/clean_top"], before["s0/pair_agree"])

    norm = None
    if args.standardize:
        flat = v_tr.flatten(0, 1)                                  # [n*K, S, F]
        norm = (flat.mean(0), flat.std(0).clamp_min(1e-4))
        v_tr, v_va, f_tr, f_va, g_tr = ((t - norm[0]) / norm[1] for t in (v_tr, v_va, f_tr, f_va, g_tr))
        v_nz = (v_nz - norm[0]) / norm[1] if v_nz is not None else None
        adv = ((adv[0] - norm[0]) / norm[1], *adv[1:]) if adv is not None else None
    if args.reinit:
        for head in model.score_heads:
            for m in head.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    params = list(model.score_heads.parameters())
    for prm in params:
        prm.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.learning_rate, total_steps=args.steps, pct_start=0.05)
    cfg = OrderConfig(slope=args.slope, min_gap=args.min_gap, lambda_order=args.lambda_order, lambda_cal=args.lambda_cal)
    rng = np.random.default_rng(args.seed)
    n_stages = model.num_stages + 1
    history = []
    for step in tqdm(range(args.steps), desc="fit heads"):
        iv = torch.from_numpy(rng.integers(0, len(v_tr), args.batch_versions))
        it = torch.from_numpy(rng.integers(0, len(f_tr), args.batch_triplets))
        ig = torch.from_numpy(rng.integers(0, len(g_tr), args.batch_triplets // 2))
        drop = (lambda t: F.dropout(t, args.input_dropout)) if args.input_dropout > 0 else (lambda t: t)
        s_v = stage_scores(model, drop(v_tr[iv]))                 # [b, K, S]
        s_n = stage_scores(model, v_nz[iv]) if v_nz is not None else None
        s_f = stage_scores(model, drop(f_tr[it]))                 # [b, 3, S]
        s_g = stage_scores(model, g_tr[ig])                       # [b, S]
        if adv is not None:  # sets with their attacked versions appended, ordered by the teacher
            ia = torch.from_numpy(rng.integers(0, len(chosen), args.batch_versions))
            s_a = stage_scores(model, drop(torch.cat([v_tr[chosen[ia]], adv[0][ia]], 1)))
            d_a = torch.cat([d_tr[chosen[ia]], adv[1][ia]], 1)
        terms = {"order": 0.0, "cal": 0.0, "rank": 0.0, "garbage": 0.0, "consistency": 0.0, "floor": 0.0, "adv": 0.0}
        loss = 0.0
        for k in range(n_stages):
            o = order_loss(s_v[..., k], d_tr[iv], cfg)
            rank = ranking_loss(s_f[:, 0, k], s_f[:, 1, k], s_f[:, 2, k], args.margin, args.margin)
            garb = F.relu(args.margin_garbage - (s_f[: len(ig), 2, k].detach() - s_g[:, k])).mean()
            gap = (s_v[:, :1, k] - s_v[:, 1:, k]).mean().detach().abs().clamp_min(0.25)
            cons = (s_n[..., k] - s_v[..., k]).abs().mean() / gap if s_n is not None else s_v.new_zeros(())
            floor = (F.relu(args.raw_floor - s_g[:, k]).mean() + F.relu(args.raw_floor - s_v[..., k]).mean())
            adv_k = order_loss(s_a[..., k], d_a, cfg)["loss"] if adv is not None else s_v.new_zeros(())
            lk = (o["loss"] + args.lambda_rank * rank + args.lambda_garbage * garb
                  + args.lambda_consistency * cons + floor + args.lambda_adv * adv_k)
            loss = loss + lk / n_stages
            for name, v in (("order", o["order"]), ("cal", o["cal"]), ("rank", rank), ("garbage", garb),
                            ("consistency", cons), ("floor", floor), ("adv", adv_k)):
                terms[name] += float(v.detach()) / n_stages
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        opt.step()
        sched.step()
        if (step + 1) % max(1, args.steps // 8) == 0 or step + 1 == args.steps:
            fig = evaluate(model, v_va, d_va, f_va)
            if adv is not None:
                fig.update(adversarial_figures(model, v_tr, d_tr, adv, chosen))
            history.append({"step": step + 1, **{k: round(v, 4) for k, v in terms.items()}, **fig})
            last = model.num_stages
            logger.info("step %d: loss terms %s | val s%d clean_top %.3f pair_agree %.3f triplet %.3f | s0 %.3f %.3f",
                        step + 1, {k: round(v, 4) for k, v in terms.items()}, last, fig[f"s{last}/clean_top"],
                        fig[f"s{last}/pair_agree"], fig[f"s{last}/triplet_acc"], fig["s0/clean_top"], fig["s0/pair_agree"])
    model.requires_grad_(False)
    if norm is not None:
        fold_standardization(model, *norm)
    card = model_card(args, before, history[-1] if history else {}, len(v_tr), int(v_tr.shape[1]), n_stages - 1)
    return write_outputs(model, fgr_va, args, card, t0, before=before, history=history,
                         train_sets=int(v_tr.shape[0]), train_photos=n_photos)


def write_outputs(model: FinPercepRM, fgr_val: FGRDataset, args: argparse.Namespace, card: str, t0: float,
                  **result: object) -> dict:
    """The end of a score-training run: calibrate every stage on ``fgr_val``, write the model with its
    card to ``<output_dir>/model`` (atomically) and ``result`` (with the run's arguments and time) to
    ``<output_dir>/result.json``."""
    model.register_to_config(score_calibration=fit_calibration(model, fgr_val, range(model.num_stages + 1)))
    atomic_write_dir(args.output_dir / "model", lambda tmp: (model.save_pretrained(tmp),
                                                             (tmp / "README.md").write_text(card)))
    result = {"args": {k: str(v) for k, v in vars(args).items()}, **result, "seconds": round(time.time() - t0, 1)}
    (args.output_dir / "result.json").write_text(json.dumps(result, indent=2))
    logger.info("wrote %s in %.0f s", args.output_dir / "model", time.time() - t0)
    return result


if __name__ == "__main__":
    main()
