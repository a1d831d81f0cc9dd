"""Test helper (not a CLI of the package): run ``training.ccl_lora`` in this process and SIGKILL it
right after optimizer step N, with no cleanup of any kind (a crash for the resume tests).

    python tests/ccl_kill_after.py N [ccl_lora flags...]
"""
from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    from training import ccl_lora

    kill_after = int(sys.argv[1])

    def kill(step: int, record: dict) -> None:
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    ccl_lora.main(sys.argv[2:], step_callback=kill)


if __name__ == "__main__":
    main()
