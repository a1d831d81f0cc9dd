"""The co-evolving reward (OURS; the "co-evolution" of PAPER.md §5 taken literally): during ReFL the
reward model learns the policy's own hacks.

Every ``every`` policy steps, the policy's current outputs on fresh training crops (whose HR we
have) become FGR items by the data engine's own code (:func:`training.data.build_fgr.swap_region`
swaps a random region of the output into the HR photo; :func:`training.data.gt_maps.gt_map` makes
the GT map from the difference to HR, with the FGR dataset's own scales), and the active reward
stage is fine-tuned for ``steps`` optimizer steps on a replay mix of these items and the original
FGR train split, with the stage objective of the reward-model trainer
(:func:`training.train_reward.stage_loss`).

Guard rails, measured on every update and logged (an update that breaks one is undone):

* the bounded update: the change of the updated parameters is scaled down to at most
  ``max_update`` times their norm;
* FGR validation: the stage's pixel AUROC (stage >= 1) and pair accuracy on ``val_items`` items of
  the FGR val split must not fall more than ``max_drop`` below their values before the run's first
  update of that stage;
* the HR band: the mean calibrated score of those val photos' clean GT must stay within
  ``hr_band`` of its value before the first update.

A hack memory (``memory`` > 0, off by default): the policy items of past updates are kept, up to
``memory`` of them (oldest dropped first), and each update draws its policy items from the fresh ones
and the memory alike, so a hack the reward learned once is not forgotten when the policy moves on,
and a stage the curriculum reaches later learns the hacks found under the earlier stages at its first
update. The memory is stored quantized (images and mask as uint8, the GT map as float16) and used
only in that form, so it goes into every checkpoint (``coevolve_memory.safetensors``) exactly.

Teacher labels (``labels: teacher``; default ``maps``): every update also orders whole versions of the
fresh crops as a full-reference teacher does (``teacher``, LPIPS-alex by default: the labels the v6 score
heads were fitted on, :mod:`training.fit_heads`): per crop the HR photo, the policy's output and the
bicubic upscale of its LR input, with the teacher's distance to HR, and the pairwise order term of
:func:`training.whole_image.order_loss` on the stage's raw score (weight ``lambda_order``) beside the
map-labelled FGR items. So an output that the teacher finds further from HR than bicubic must score
below bicubic, not only below HR. The guards are the same.

What is updated (``update``): ``score`` = the stage's score head; ``heads`` = the score head and
the map head of the stage's decoder level (no other stage changes); ``level`` = the score head and
the whole decoder level (the finer stages that build on that level change too). The encoder never
changes. Each update starts a fresh optimizer and draws all its randomness from ``(seed, step)``,
so with the reward model's weights in the checkpoint a resumed run repeats an uninterrupted one.

Configured by the ``coevolve`` block of a CCL schedule (off when absent)::

    coevolve: {data: data/fgr_v4, every: 50, items: 8, steps: 10, update: heads, memory: 0}
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

UPDATES = ("score", "heads", "level")
REWARD_WEIGHTS = "reward_model.safetensors"  # the adapted reward model inside a checkpoint
MEMORY_FILE = "coevolve_memory.safetensors"  # the hack memory inside a checkpoint
ITEM_KEYS = ("gt", "sr", "syn", "mask", "mgt")
LABELS = ("maps", "teacher")


class TeacherVersions(NamedTuple):
    """``images`` ``[B, 3, 3, H, W]`` (HR, the policy's output, bicubic), ``distance`` ``[B, 3]`` (the
    teacher's distance to HR; HR's is 0) and ``feats``, the reward encoder's features of the ``B * 3``
    images."""

    images: torch.Tensor
    distance: torch.Tensor
    feats: list[torch.Tensor]


@dataclass
class CoevolveConfig:
    """The ``coevolve`` block of a CCL schedule (see the module docstring)."""

    data: str
    every: int = 50
    items: int = 8
    steps: int = 10
    batch_size: int = 8
    replay: float = 0.5
    learning_rate: float = 3e-4
    update: str = "heads"
    max_update: float = 0.05
    max_drop: float = 0.03
    hr_band: float = 0.1
    val_items: int = 64
    memory: int = 0
    labels: str = "maps"
    teacher: str = "lpips_alex"
    lambda_order: float = 1.0

    @classmethod
    def from_dict(cls, d: Any, source: str = "schedule") -> "CoevolveConfig":
        where = f"{source}: coevolve"
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be a mapping, e.g. {{data: data/fgr_v4, every: 50}}")
        known = {f.name for f in fields(cls)}
        bad = set(d) - known
        if bad:
            raise ValueError(f"{where} has unknown keys {sorted(bad)}; allowed: {sorted(known)}")
        if not d.get("data"):
            raise ValueError(f"{where} needs 'data': an FGR dataset folder (python -m training.data.build_fgr) "
                             "for the replay items, the validation guard and the GT-map settings")
        cfg = cls(**{**d, "data": str(d["data"])})
        for name in ("every", "items", "steps", "batch_size", "val_items"):
            v = getattr(cfg, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{where}.{name} must be a positive integer, got {v!r}")
        if cfg.update not in UPDATES:
            raise ValueError(f"{where}.update must be one of {UPDATES}, got {cfg.update!r}")
        if not 0.0 <= cfg.replay < 1.0:
            raise ValueError(f"{where}.replay (the share of original FGR items per batch) must be in [0, 1), "
                             f"got {cfg.replay!r}")
        if cfg.labels not in LABELS:
            raise ValueError(f"{where}.labels must be one of {LABELS}, got {cfg.labels!r}")
        if cfg.labels == "teacher":
            from training.whole_image import parse_teacher

            try:
                parse_teacher(cfg.teacher)
            except ValueError as e:
                raise ValueError(f"{where}.teacher: {e}") from e
        if not isinstance(cfg.memory, int) or isinstance(cfg.memory, bool) or cfg.memory < 0:
            raise ValueError(f"{where}.memory (past policy items kept for replay; 0 = off) must be an integer "
                             f">= 0, got {cfg.memory!r}")
        if cfg.lambda_order < 0:
            raise ValueError(f"{where}.lambda_order must be >= 0, got {cfg.lambda_order!r}")
        for name in ("learning_rate", "max_update", "max_drop", "hr_band"):
            if not float(getattr(cfg, name)) > 0:
                raise ValueError(f"{where}.{name} must be > 0, got {getattr(cfg, name)!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RewardCoevolver:
    """Fine-tunes ``rm`` (in place) on the policy's own outputs; see the module docstring.

    ``photos``/``hr_size``/``scale``/``degradation`` make the fresh training crops (as the policy's
    training pairs are made, from another seed). :meth:`update` runs at every step where :meth:`due`
    says so; :meth:`state_dict` / :meth:`load_state_dict` hold what a checkpoint needs besides the
    reward model's weights."""

    def __init__(self, rm: Any, cfg: CoevolveConfig, photos: list, hr_size: int, scale: int, degradation: str,
                 seed: int) -> None:
        from training.ccl.data import SRPairSampler
        from training.data.fgr_dataset import FGRDataset
        from training.data.gt_maps import FEATURE_DISTANCES, GTMapConfig

        self.rm, self.cfg, self.seed = rm, cfg, int(seed)
        root = Path(cfg.data)
        if not (root / "dataset.json").is_file():
            raise FileNotFoundError(f"coevolve.data {root} is not an FGR dataset (no dataset.json): build one with "
                                    f"python -m training.data.build_fgr --out {root}, or point coevolve.data at one")
        meta = json.loads((root / "dataset.json").read_text())
        self.crop = min(int(hr_size), int(meta["hr_size"]))
        self.train = FGRDataset(root, "train", crop=self.crop, augment=True)
        try:
            self.val = FGRDataset(root, "val", limit=cfg.val_items)
        except ValueError as e:
            raise ValueError(f"coevolve.data {root} has no val split, which the guard measures on: {e}") from e
        self.feature = FEATURE_DISTANCES[meta.get("feature", "efficientnet_lite0")]()
        self.gt_cfg = GTMapConfig(**meta["gt_map"])
        self.sampler = SRPairSampler(photos, hr_size, scale, degradation, seed=self.seed + 104_729)
        self.baselines: dict[str, dict[str, float]] = {}
        self.history: list[dict[str, Any]] = []
        self.memory: dict[str, torch.Tensor] = {}  # encoded (see encode_items); empty when off or not yet filled

    # ------------------------------------------------------------------ pieces
    def due(self, step_done: int) -> bool:
        return step_done % self.cfg.every == 0

    def parameters(self, stage: int) -> list[torch.nn.Parameter]:
        """The parameters an update at ``stage`` changes (``cfg.update``)."""
        params = list(self.rm.score_heads[stage].parameters())
        if stage > 0 and self.cfg.update == "heads":
            params += list(self.rm.decoder[stage - 1].head.parameters())
        elif stage > 0 and self.cfg.update == "level":
            params += list(self.rm.decoder[stage - 1].parameters())
        return params

    @torch.no_grad()
    def policy_items(self, policy: Any, step: int) -> dict[str, torch.Tensor]:
        """FGR items (``gt``, ``sr``, ``syn``, ``mask``, ``mgt``; Bx?xCxC) of the policy's outputs on
        ``cfg.items`` fresh training crops, drawn from ``(seed, step)``."""
        return self.swap_items(*self.policy_outputs(policy, step)[1:], step)

    @torch.no_grad()
    def policy_outputs(self, policy: Any, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(lr, hr, sr)``: ``cfg.items`` fresh training pairs drawn from ``(seed, step)`` and the
        policy's outputs on them (eval mode, CPU tensors in [0, 1])."""
        lr, hr = self.sampler.batch(self.cfg.items, step)
        dev = next(self.rm.parameters()).device
        was = policy.training
        policy.eval()
        gen = torch.Generator(device="cpu").manual_seed(int(np.random.default_rng([self.seed, step, 23]).integers(2**62)))
        sr = policy(lr.to(dev), generator=gen)["images"].float().clamp(0, 1).cpu()
        policy.train(was)
        return lr, hr, sr

    def swap_items(self, hr: torch.Tensor, sr: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """FGR items made from whole ``hr`` / ``sr`` pairs: a random region of ``sr`` swapped into
        ``hr``, with its GT map (the data engine's code)."""
        from training.data.build_fgr import swap_region
        from training.data.gt_maps import gt_map

        rng = np.random.default_rng([self.seed, step, 29])
        items = []
        for h, s in zip(hr.permute(0, 2, 3, 1).numpy(), sr.permute(0, 2, 3, 1).numpy()):
            c = self.crop
            y, x = int(rng.integers(0, h.shape[0] - c + 1)), int(rng.integers(0, h.shape[1] - c + 1))
            h, s = np.ascontiguousarray(h[y:y + c, x:x + c]), np.ascontiguousarray(s[y:y + c, x:x + c])
            t = swap_region(h, s, rng)
            t["mgt"] = gt_map(t["syn"], t["gt"], t["mask"], self.feature, self.gt_cfg)
            items.append(t)
        out = {}
        for k in ITEM_KEYS:
            a = torch.from_numpy(np.stack([np.asarray(t[k], dtype=np.float32) for t in items]))
            out[k] = a.permute(0, 3, 1, 2).contiguous() if a.ndim == 4 else a[:, None].contiguous()
        return out

    @torch.no_grad()
    def teacher_versions(self, lr: torch.Tensor, hr: torch.Tensor, sr: torch.Tensor) -> "TeacherVersions":
        """Whole-image versions of each crop, their teacher distances to HR and their encoder features
        (``labels: teacher``): the HR photo, the policy's output and bicubic of the LR input."""
        import torch.nn.functional as F

        from diffusers_ext.perceptual import full_reference_metrics
        from training.whole_image import parse_teacher

        bic = F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        weights = parse_teacher(self.cfg.teacher)
        dist = torch.zeros(hr.shape[0], 3)
        for col, x in ((1, sr), (2, bic)):
            m = full_reference_metrics(x, hr, metrics=list(weights))
            dist[:, col] = torch.from_numpy(sum(w * m[k] for k, w in weights.items())).float()
        images = torch.stack([hr, sr, bic], 1)
        dev = next(self.rm.parameters()).device
        # the encoder never changes during an update (module docstring): encode once, not at every step
        return TeacherVersions(images, dist, self.rm.encode(images.flatten(0, 1).to(dev)))

    def order_term(self, versions: "TeacherVersions", stage: int) -> torch.Tensor:
        """The pairwise teacher-order loss of the stage's raw score on ``versions``."""
        from training.whole_image import OrderConfig, order_loss

        b, k = versions.distance.shape
        raw = self.rm.predict(versions.feats, tuple(versions.images.shape[-2:]), stage)[0].view(b, k)
        return order_loss(raw, versions.distance.to(raw.device), OrderConfig(lambda_cal=0.0))["order"]

    # ------------------------------------------------------------------ the hack memory
    @staticmethod
    def encode_items(items: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Policy items as the memory stores them: images and mask as uint8, the GT map as float16."""
        return {k: (v.to(torch.float16) if k == "mgt" else (v.clamp(0, 1) * 255).round().to(torch.uint8)).contiguous()
                for k, v in items.items()}

    @staticmethod
    def decode_items(enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.float() if k == "mgt" else v.float() / 255.0) for k, v in enc.items()}

    def _remember(self, fresh: dict[str, torch.Tensor]) -> None:
        if self.cfg.memory <= 0:
            return
        enc = self.encode_items(fresh)
        if self.memory:
            enc = {k: torch.cat([self.memory[k], enc[k]]) for k in ITEM_KEYS}
        self.memory = {k: v[-self.cfg.memory:].contiguous() for k, v in enc.items()}

    def memory_state(self) -> dict[str, torch.Tensor]:
        """The memory's tensors, for ``coevolve_memory.safetensors`` in a checkpoint (empty when off)."""
        return dict(self.memory)

    def load_memory_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors and set(tensors) != set(ITEM_KEYS):
            raise ValueError(f"a co-evolution memory needs the tensors {ITEM_KEYS}, got {sorted(tensors)}")
        self.memory = {k: v.cpu().contiguous() for k, v in tensors.items()}

    def _pool(self, fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The policy items an update draws from: the fresh ones and the memory's."""
        if not self.memory:
            return fresh
        old = self.decode_items(self.memory)
        return {k: torch.cat([fresh[k], old[k]]) for k in ITEM_KEYS}

    def _mix(self, pool: dict[str, torch.Tensor], step: int, i: int) -> dict[str, torch.Tensor]:
        """One replay batch: ``(1 - replay)`` of it policy items (random flips / rotations),
        the rest original FGR train items (random crops), all drawn from ``(seed, step, i)``."""
        from training.data.fgr_dataset import collate

        rng = np.random.default_rng([self.seed, step, 31, i])
        bs = self.cfg.batch_size
        n_policy = max(1, int(round(bs * (1.0 - self.cfg.replay))))
        pick = rng.integers(0, pool["gt"].shape[0], size=n_policy)
        flips, rots = rng.random(n_policy) < 0.5, rng.integers(0, 4, size=n_policy)
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in ITEM_KEYS}
        for j, f, r in zip(pick, flips, rots):
            for k in rows:
                a = pool[k][int(j)]
                a = a.flip(-1) if f else a
                rows[k].append(torch.rot90(a, int(r), dims=(-2, -1)))
        batch = {k: torch.stack(v) for k, v in rows.items()}
        if bs > n_policy:
            keys = [(int(a), int(b)) for a, b in zip(rng.integers(0, len(self.train), size=bs - n_policy),
                                                     rng.integers(0, 2**31, size=bs - n_policy))]
            old = collate([self.train[k] for k in keys])
            batch = {k: torch.cat([batch[k], old[k]]) for k in batch}
        return batch

    @torch.no_grad()
    def figures(self, stage: int) -> dict[str, float]:
        """The guard's figures at ``stage`` on the FGR val items (calibrated scores)."""
        from training.metrics import evaluate_stage

        dev = next(self.rm.parameters()).device
        f = evaluate_stage(self.rm, self.val, stage, device=dev)
        return {"auroc": f["pdm_auroc"], "pair_acc": f["pair_acc"], "hr_score": f["score_gt"]}

    @torch.no_grad()
    def policy_figures(self, items: dict[str, torch.Tensor], stage: int) -> dict[str, float]:
        """How the reward sees the policy's outputs: the share of items whose HR scores above the output
        (``hr_wins``), and the mean score gap ``S(output) - S(HR)`` (above 0: the policy beats HR)."""
        dev = next(self.rm.parameters()).device
        s_hr = self.rm(items["gt"].to(dev), stage=stage).score
        s_sr = self.rm(items["sr"].to(dev), stage=stage).score
        return {"hr_wins": float((s_hr > s_sr).float().mean()), "gap": float((s_sr - s_hr).mean())}

    # ------------------------------------------------------------------ the update
    def update(self, policy: Any, step: int, stage: int) -> dict[str, Any]:
        from training.train_reward import loss_settings, stage_loss

        cfg, rm = self.cfg, self.rm
        key = str(stage)
        if key not in self.baselines:
            self.baselines[key] = self.figures(stage)
        base = self.baselines[key]
        lr, hr, sr = self.policy_outputs(policy, step)
        fresh = self.swap_items(hr, sr, step)
        pool = self._pool(fresh)
        before = self.policy_figures(fresh, stage)
        params = self.parameters(stage)
        start = [p.detach().clone() for p in params]
        settings = loss_settings(stage)
        was = rm.training
        rm.eval()  # BatchNorm statistics and dropout stay those of the trained model
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
        dev = next(rm.parameters()).device
        losses: list[float] = []
        orders: list[float] = []
        try:
            versions = self.teacher_versions(lr, hr, sr) if cfg.labels == "teacher" else None
            for i in range(cfg.steps):
                batch = {k: v.to(dev) for k, v in self._mix(pool, step, i).items()}
                loss = stage_loss(rm, batch, settings)["loss"]
                if versions is not None:
                    order = self.order_term(versions, stage)
                    orders.append(float(order.detach()))
                    loss = loss + cfg.lambda_order * order
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                losses.append(float(loss.detach()))
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
            rm.train(was)
        with torch.no_grad():
            delta = torch.sqrt(sum(((p - s) ** 2).sum() for p, s in zip(params, start)))
            norm = torch.sqrt(sum((s ** 2).sum() for s in start))
            limit = cfg.max_update * norm
            scaled = bool(delta > limit)
            if scaled:
                for p, s in zip(params, start):
                    p.copy_(s + (p - s) * (limit / delta))
        after = self.figures(stage)
        reasons = []
        if stage > 0 and after["auroc"] < base["auroc"] - cfg.max_drop:
            reasons.append(f"val AUROC {after['auroc']:.4f} < {base['auroc']:.4f} - {cfg.max_drop}")
        if after["pair_acc"] < base["pair_acc"] - cfg.max_drop:
            reasons.append(f"val pair accuracy {after['pair_acc']:.4f} < {base['pair_acc']:.4f} - {cfg.max_drop}")
        if abs(after["hr_score"] - base["hr_score"]) > cfg.hr_band:
            reasons.append(f"HR score {after['hr_score']:.4f} left {base['hr_score']:.4f} ± {cfg.hr_band}")
        if reasons:
            with torch.no_grad():
                for p, s in zip(params, start):
                    p.copy_(s)
        rec = {"step": step, "rm_stage": stage, "accepted": not reasons, "rejected_because": reasons,
               "memory_items": int(pool["gt"].shape[0] - fresh["gt"].shape[0]),
               "loss_first": losses[0], "loss_last": losses[-1],
               **({"order_first": orders[0], "order_last": orders[-1],
                   "teacher_sr": float(versions.distance[:, 1].mean()),
                   "teacher_bicubic": float(versions.distance[:, 2].mean())}
                  if versions is not None else {}),
               "update_norm": float(min(delta, limit) / norm), "scaled": scaled,
               **{f"val_{k}": v for k, v in after.items()},
               **{f"policy_{k}_before": v for k, v in before.items()},
               **{f"policy_{k}_after": v for k, v in (self.policy_figures(fresh, stage) if not reasons else before).items()}}
        self.history.append(rec)
        self._remember(fresh)
        logger.info("co-evolution at step %d (RM_%d): %s%s", step, stage, "accepted" if not reasons else "undone: ",
                    "; ".join(reasons))
        return rec

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"config": self.cfg.to_dict(), "baselines": self.baselines, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baselines = dict(state.get("baselines", {}))
        self.history = list(state.get("history", []))

    def summary(self) -> dict[str, Any]:
        """Counts and the last record, for ``result.json``."""
        acc = [r for r in self.history if r["accepted"]]
        return {"updates": len(self.history), "accepted": len(acc), "config": self.cfg.to_dict(),
                "baselines": self.baselines, "last": self.history[-1] if self.history else None}
