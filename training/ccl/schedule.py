"""The Co-evolutionary Curriculum as data (PAPER.md §5): the stages of a CCL run, its YAML/JSON
schedule files (``training/configs/*.yaml``), and the tracker that decides when to switch stage.

Each stage names a reward-model stage and the weights of the reward fusion
(:func:`diffusers_ext.rewards.fused_reward`); the reward itself stays in the core library.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffusers_ext.rewards import RewardConfig, SoftMaxKind
from training.ccl.coevolve import CoevolveConfig

__all__ = ["CCLSchedule", "CurriculumStage", "CurriculumTracker", "load_mapping"]


def load_mapping(path: str | Path, what: str = "file") -> Any:
    """The parsed content of a ``.json`` / ``.yaml`` / ``.yml`` file (YAML needs PyYAML, the train extra)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)


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
    stage runs until the training's total step count. An optional ``coevolve`` mapping switches on
    the co-evolving reward (:class:`training.ccl.coevolve.CoevolveConfig`): the reward model
    learns the policy's own outputs during the run."""

    stages: list[CurriculumStage]
    reward: RewardConfig = field(default_factory=RewardConfig)
    coevolve: CoevolveConfig | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | list, source: str = "schedule") -> "CCLSchedule":
        if isinstance(d, list):
            d = {"stages": d}
        if not isinstance(d, dict) or not isinstance(d.get("stages"), list) or not d["stages"]:
            raise ValueError(f"{source}: a CCL schedule needs a non-empty 'stages' list")
        unknown_top = set(d) - {"stages", "reward", "description", "coevolve"}
        if unknown_top:
            raise ValueError(f"{source}: unknown top-level keys {sorted(unknown_top)}; "
                             f"allowed: stages, reward, coevolve, description")
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
        coevolve = None if d.get("coevolve") is None else CoevolveConfig.from_dict(d["coevolve"], source)
        sched = cls(stages=stages, reward=RewardConfig(**rew), coevolve=coevolve)
        sched.validate(source=source)
        return sched

    @classmethod
    def load(cls, path: str | Path) -> "CCLSchedule":
        """Read a ``.json`` / ``.yaml`` / ``.yml`` schedule file."""
        return cls.from_dict(load_mapping(path, "CCL schedule file"), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = {"reward": {k: getattr(self.reward, k) for k in sorted(_REWARD_FIELDS)},
               "stages": [{k: v for k, v in s.to_dict().items() if v not in (None, {}) and not (k == "min_steps" and v == 0)}
                          for s in self.stages]}
        if self.coevolve is not None:
            out["coevolve"] = self.coevolve.to_dict()
        return out

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
