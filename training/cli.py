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

import importlib
from typing import Any, Callable, Optional


def _script(module: str) -> Callable[[Optional[list[str]]], int]:
    """A console-script function that imports ``module`` only when run (cheap start-up) and turns
    its ``main``'s result into an exit code."""

    def run(argv: Optional[list[str]] = None) -> int:
        result: Any = importlib.import_module(module).main(argv)
        return result if isinstance(result, int) else 0

    run.__name__ = module.rsplit(".", 1)[-1]
    return run


ccl_lora = _script("training.ccl_lora")
train_reward = _script("training.train_reward")
train_default = _script("training.train_default")
evaluate_reward = _script("training.evaluate_reward")
build_fgr = _script("training.data.build_fgr")
ccl_experiment = _script("training.ccl.experiment")
