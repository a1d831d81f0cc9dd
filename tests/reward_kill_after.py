"""Test helper (not a CLI of the package): run ``training.train_reward`` in this process and SIGKILL it
in the middle of optimizer step N (inside that step's loss forward, after the checkpoints of the
steps before it were written), with no cleanup of any kind (a crash for the resume tests).

    python tests/reward_kill_after.py N [train_reward flags...]
"""
from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    from training import train_reward

    kill_in = int(sys.argv[1])
    real_forward = train_reward.StageObjective.forward
    calls = 0

    def forward(self, batch):
        nonlocal calls
        calls += 1  # one loss forward per optimizer step (validation and attacks use the model itself)
        if calls == kill_in:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_forward(self, batch)

    train_reward.StageObjective.forward = forward
    train_reward.main(sys.argv[2:])


if __name__ == "__main__":
    main()
