"""Console scripts of the training package (``[project.scripts]`` in pyproject.toml).

Each wraps a module's ``main`` (which returns a result dict for tests and notebooks) into an exit
code. The same commands run as modules, under ``accelerate launch`` too::

    finpercep-train-lora --help                       # = python -m training.ccl_lora --help
    accelerate launch -m training.ccl_lora ...        # multi-process: accelerate's -m
    finpercep-train-reward ...                        # = python -m training.train_reward
    finpercep-train-default                           # = python -m training.train_default
    finpercep-evaluate-reward ...                     # = python -m training.evaluate_reward
    finpercep-build-fgr ...                           # = python -m training.data.build_fgr
    finpercep-ccl-experiment ...                      # = python -m training.ccl.experiment
"""
from __future__ import annotations

from typing import Any, Optional


def _code(result: Any) -> int:
    return result if isinstance(result, int) else 0


def ccl_lora(argv: Optional[list[str]] = None) -> int:
    from training.ccl_lora import main

    return _code(main(argv))


def train_reward(argv: Optional[list[str]] = None) -> int:
    from training.train_reward import main

    return _code(main(argv))


def train_default(argv: Optional[list[str]] = None) -> int:
    from training.train_default import main

    return _code(main(argv))


def evaluate_reward(argv: Optional[list[str]] = None) -> int:
    from training.evaluate_reward import main

    return _code(main(argv))


def build_fgr(argv: Optional[list[str]] = None) -> int:
    from training.data.build_fgr import main

    return _code(main(argv))


def ccl_experiment(argv: Optional[list[str]] = None) -> int:
    from training.ccl.experiment import main

    return _code(main(argv))
