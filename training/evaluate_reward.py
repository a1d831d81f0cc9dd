"""Validation figures of every curriculum stage of a reward model on an FGR split.

    python -m training.evaluate_reward [--model diffusers_ext/default] [--data data/fgr_v4] [--split test]

Prints a markdown table (see :mod:`training.metrics` for the definitions) and, with ``--json``,
writes the figures to a file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from diffusers_ext.hub import resolve_model_dir
from diffusers_ext.models.finpercep_rm import FinPercepRM
from training.data.fgr_dataset import FGRDataset
from training.metrics import evaluate_stages, format_table


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder or Hub id (default: the bundled model)")
    ap.add_argument("--data", type=Path, default=Path("data/fgr_v4"))
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--stages", default="all", help="'all' or a comma list such as 0,5")
    ap.add_argument("--limit", type=int, default=None, help="only the first N items")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    model = FinPercepRM.from_pretrained(resolve_model_dir(args.model)).eval()
    stages = range(model.num_stages + 1) if args.stages == "all" else [int(s) for s in args.stages.split(",")]
    data = FGRDataset(args.data, args.split, limit=args.limit)
    rows = evaluate_stages(model, data, stages)
    print(format_table(rows, args.split))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
