"""Rewards built on FinPercep-RM (PAPER.md §4) and the CCL reward-stage schedule as data (§5).

    R_k = λ1 · S_global + λ2 · (1 - softmax_k(M_pdm))

``softmax_k`` is a differentiable estimate of the map's spatial maximum, so the worst local defect
becomes the penalty. Two estimators (OURS; the paper does not define it): the mean of the top-p
fraction of values (``"topk"``), or a temperature LogSumExp (``"lse"``).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

SoftMaxKind = Literal["topk", "lse", "max", "mean"]


def topk_mean(m: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Mean of the largest ``fraction`` of values of each map. ``m``: ``[B, ...]`` -> ``[B]``."""
    flat = m.flatten(1)
    k = max(1, int(math.ceil(flat.shape[1] * fraction)))
    return flat.topk(k, dim=1).values.mean(1)


def lse_max(m: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Smooth maximum ``τ·log(mean(exp(m/τ)))``: between the mean (τ→∞) and the max (τ→0)."""
    flat = m.flatten(1)
    return temperature * (torch.logsumexp(flat / temperature, dim=1) - math.log(flat.shape[1]))


def soft_spatial_max(m: torch.Tensor, kind: SoftMaxKind = "topk", fraction: float = 0.01,
                     temperature: float = 0.05) -> torch.Tensor:
    """The differentiable spatial maximum ``softmax_k(M)`` of each map in a batch."""
    if kind == "topk":
        return topk_mean(m, fraction)
    if kind == "lse":
        return lse_max(m, temperature)
    if kind == "max":
        return m.flatten(1).amax(1)
    if kind == "mean":
        return m.flatten(1).mean(1)
    raise ValueError(f"unknown soft-max kind {kind!r}; use 'topk', 'lse', 'max' or 'mean'")


@dataclass
class RewardConfig:
    """Weights of the decoupled reward fusion at one curriculum stage."""

    lambda_global: float = 1.0
    lambda_pdm: float = 0.0
    softmax: SoftMaxKind = "topk"
    top_fraction: float = 0.01
    temperature: float = 0.05


@dataclass
class RewardTerms:
    reward: torch.Tensor  # [B]
    score: torch.Tensor  # [B] S_global
    pdm_penalty: torch.Tensor  # [B] softmax_k(M)


def fused_reward(score: torch.Tensor, pdm: torch.Tensor | None, cfg: RewardConfig) -> RewardTerms:
    """``R = λ1·S + λ2·(1 - softmax(M))``; with no map (stage 0) the map term is 0 penalty."""
    if pdm is None:
        penalty = torch.zeros_like(score)
    else:
        penalty = soft_spatial_max(pdm, cfg.softmax, cfg.top_fraction, cfg.temperature)
    reward = cfg.lambda_global * score + cfg.lambda_pdm * (1.0 - penalty)
    return RewardTerms(reward=reward, score=score, pdm_penalty=penalty)


def compute_reward(model: Any, images: torch.Tensor, cfg: RewardConfig, stage: int | None = None) -> RewardTerms:
    """Differentiable reward of ``images`` (``Bx3xHxW`` in [0,1]) under a FinPercepRM at ``stage``."""
    out = model(images, stage=stage)
    use_map = out.pdm if (stage if stage is not None else model.config.stage) > 0 else None
    return fused_reward(out.score, use_map, cfg)


def refl_loss(reward: torch.Tensor, kind: str = "relu", margin: float = 2.0, grad_scale: float = 1e-3) -> torch.Tensor:
    """The ReFL generator loss of a batch of rewards (mean over the batch).

    ``"relu"``: ImageReward's ``relu(-R + margin) * grad_scale`` (no push once R >= margin);
    ``"neg"``: ``-R * grad_scale``."""
    if kind == "relu":
        per = torch.relu(margin - reward)
    elif kind == "neg":
        per = -reward
    else:
        raise ValueError(f"unknown ReFL loss {kind!r}; use 'relu' or 'neg'")
    return per.mean() * grad_scale


@dataclass
class CurriculumStage:
    """One CCL stage: which reward-model stage, the fusion weights, and when to move on.

    Either ``steps`` (a fixed count, as in the paper) or ``plateau_window``/``plateau_threshold``
    (OURS: switch when the reward's moving average stops rising by more than the threshold:
    ``mean(last w) - mean(the w before) < threshold``, checked once ``2w`` and ``min_steps`` steps
    are done); ``max_steps`` caps a plateau stage. ``softmax``/``top_fraction``/``temperature``
    override the schedule's reward defaults for this stage; ``name`` labels logs."""

    rm_stage: int
    lambda_global: float = 1.0
    lambda_pdm: float = 0.0
    steps: int | None = None
    plateau_window: int | None = None
    plateau_threshold: float = 1e-3
    max_steps: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    min_steps: int = 0
    softmax: SoftMaxKind | None = None
    top_fraction: float | None = None
    temperature: float | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reward_config(self, defaults: RewardConfig | None = None) -> RewardConfig:
        d = defaults or RewardConfig()
        return RewardConfig(
            lambda_global=self.lambda_global, lambda_pdm=self.lambda_pdm,
            softmax=self.softmax or d.softmax,
            top_fraction=d.top_fraction if self.top_fraction is None else self.top_fraction,
            temperature=d.temperature if self.temperature is None else self.temperature)

    def label(self, index: int) -> str:
        return self.name or f"{index}:RM{self.rm_stage}"


_STAGE_FIELDS = {f for f in CurriculumStage.__dataclass_fields__}
_REWARD_FIELDS = {"softmax", "top_fraction", "temperature"}


@dataclass
class CCLSchedule:
    """The Co-evolutionary Curriculum as data: the stages in order and the reward defaults.

    File form (JSON or YAML)::

        {"reward": {"softmax": "topk", "top_fraction": 0.01},
         "stages": [{"rm_stage": 0, "lambda_global": 1.0, "lambda_pdm": 0.0, "steps": 200},
                    {"rm_stage": 3, "lambda_pdm": 0.5, "plateau_window": 25, "plateau_threshold": 0.002,
                     "max_steps": 300},
                    {"rm_stage": 5, "lambda_pdm": 1.0}]}

    Every stage but the last needs ``steps`` or ``plateau_window`` (else it never ends); the last
    stage runs until the training's total step count."""

    stages: list[CurriculumStage]
    reward: RewardConfig = field(default_factory=RewardConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | list, source: str = "schedule") -> "CCLSchedule":
        if isinstance(d, list):
            d = {"stages": d}
        if not isinstance(d, dict) or not isinstance(d.get("stages"), list) or not d["stages"]:
            raise ValueError(f"{source}: a CCL schedule needs a non-empty 'stages' list")
        unknown_top = set(d) - {"stages", "reward", "description"}
        if unknown_top:
            raise ValueError(f"{source}: unknown top-level keys {sorted(unknown_top)}; allowed: stages, reward, description")
        rew = d.get("reward") or {}
        bad = set(rew) - _REWARD_FIELDS
        if bad:
            raise ValueError(f"{source}: unknown reward keys {sorted(bad)}; allowed: {sorted(_REWARD_FIELDS)}")
        stages = []
        for i, st in enumerate(d["stages"]):
            if not isinstance(st, dict) or "rm_stage" not in st:
                raise ValueError(f"{source}: stage {i} must be a mapping with at least 'rm_stage'")
            bad = set(st) - _STAGE_FIELDS
            if bad:
                raise ValueError(f"{source}: stage {i} has unknown keys {sorted(bad)}; allowed: {sorted(_STAGE_FIELDS)}")
            stages.append(CurriculumStage(**st))
        sched = cls(stages=stages, reward=RewardConfig(**rew))
        sched.validate(source=source)
        return sched

    @classmethod
    def load(cls, path: str | Path) -> "CCLSchedule":
        """Read a ``.json`` / ``.yaml`` / ``.yml`` schedule file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CCL schedule file {path} does not exist")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {"reward": {k: getattr(self.reward, k) for k in sorted(_REWARD_FIELDS)},
                "stages": [{k: v for k, v in s.to_dict().items() if v not in (None, {}) and not (k == "min_steps" and v == 0)}
                           for s in self.stages]}

    def validate(self, num_rm_stages: int | None = None, source: str = "schedule") -> None:
        for i, st in enumerate(self.stages):
            where = f"{source}: stage {i}"
            if num_rm_stages is not None and not 0 <= st.rm_stage <= num_rm_stages:
                raise ValueError(f"{where}: rm_stage {st.rm_stage} but the reward model has stages 0..{num_rm_stages}")
            if st.rm_stage < 0:
                raise ValueError(f"{where}: rm_stage must be >= 0")
            if st.steps is not None and st.plateau_window is not None:
                raise ValueError(f"{where}: give either 'steps' or 'plateau_window', not both")
            for k in ("steps", "plateau_window", "max_steps"):
                v = getattr(st, k)
                if v is not None and (not isinstance(v, int) or v < 1):
                    raise ValueError(f"{where}: {k} must be a positive integer, got {v!r}")
            if i < len(self.stages) - 1 and st.steps is None and st.plateau_window is None:
                raise ValueError(f"{where} has neither 'steps' nor 'plateau_window', so it would never end; "
                                 f"only the last stage may run open-ended")
            if st.rm_stage == 0 and st.lambda_pdm:
                raise ValueError(f"{where}: RM stage 0 has no map, so lambda_pdm must be 0 (got {st.lambda_pdm})")
            st.reward_config(self.reward)  # checks the soft-max kind below
            kind = st.softmax or self.reward.softmax
            if kind not in ("topk", "lse", "max", "mean"):
                raise ValueError(f"{where}: unknown softmax {kind!r}; use 'topk', 'lse', 'max' or 'mean'")

    def fixed_length(self) -> int | None:
        """Total steps when every stage has a fixed ``steps`` count, else ``None``."""
        if all(s.steps is not None for s in self.stages):
            return sum(s.steps for s in self.stages)
        return None


class CurriculumTracker:
    """Where training is in a :class:`CCLSchedule`; decides the switches. JSON-serialisable state
    (:meth:`state_dict`) so a resumed run continues at the same stage and step. Feed it the same
    reward on every process (all-reduced) so that every rank switches at the same step."""

    def __init__(self, schedule: CCLSchedule) -> None:
        self.schedule = schedule
        self.index = 0
        self.stage_start = 0
        self.rewards: list[float] = []
        self.switches: list[dict[str, Any]] = []

    @property
    def stage(self) -> CurriculumStage:
        return self.schedule.stages[self.index]

    @property
    def is_last(self) -> bool:
        return self.index == len(self.schedule.stages) - 1

    def reward_config(self) -> RewardConfig:
        return self.stage.reward_config(self.schedule.reward)

    def update(self, step_done: int, reward: float) -> dict[str, Any] | None:
        """Record the reward of the step that brought the count to ``step_done``; returns the switch
        event (and moves to the next stage) when the current stage is over, else ``None``."""
        st = self.stage
        self.rewards.append(float(reward))
        keep = 2 * (st.plateau_window or 0)
        if keep and len(self.rewards) > keep:
            self.rewards = self.rewards[-keep:]
        if self.is_last:
            return None
        n = step_done - self.stage_start
        reason, detail = None, {}
        if st.steps is not None and n >= st.steps:
            reason = "steps"
        elif st.plateau_window is not None:
            w = st.plateau_window
            if n >= max(2 * w, st.min_steps) and len(self.rewards) >= 2 * w:
                new = sum(self.rewards[-w:]) / w
                old = sum(self.rewards[-2 * w:-w]) / w
                detail = {"ma_new": new, "ma_old": old}
                if new - old < st.plateau_threshold:
                    reason = "plateau"
        if reason is None and st.max_steps is not None and n >= st.max_steps:
            reason = "max_steps"
        if reason is None:
            return None
        event = {"step": step_done, "from": self.index, "to": self.index + 1, "reason": reason,
                 "from_rm_stage": st.rm_stage, "to_rm_stage": self.schedule.stages[self.index + 1].rm_stage,
                 "stage_steps": n, **detail}
        self.index += 1
        self.stage_start = step_done
        self.rewards = []
        self.switches.append(event)
        return event

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "stage_start": self.stage_start, "rewards": list(self.rewards),
                "switches": list(self.switches), "schedule": self.schedule.to_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("schedule") is not None and d["schedule"] != self.schedule.to_dict():
            raise ValueError("the checkpoint was written with another CCL schedule; resume with the same "
                             "--ccl_config (or start a new --output_dir)")
        self.index, self.stage_start = int(d["index"]), int(d["stage_start"])
        self.rewards, self.switches = [float(r) for r in d["rewards"]], list(d["switches"])
