"""The viewer's command line, without importing Gradio (so ``finpercep --help`` stays fast).

``finpercep view`` finds this module through the ``finpercep.commands`` entry point that the demo
package registers (pyproject.toml): the core CLI never imports the demo. ``python -m demo.app``
parses the same options.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

DESCRIPTION = ("FinPercep PDM viewer: see where an image is broken, compare two upscales, export the map "
               "(a local Gradio page, http://127.0.0.1:7860 by default).")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--model", default=None, help="reward model folder or Hub id (default: the bundled model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    p.add_argument("--max-file-size", default="25mb", help="largest upload, e.g. 25mb, 1gb (default 25mb)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse larger images before decoding (default 36 MP)")
    p.add_argument("--concurrency", type=int, default=1, help="model jobs running at once (default 1)")
    p.add_argument("--queue-size", type=int, default=16, help="jobs waiting at most (default 16)")
    p.add_argument("--max-batch", type=int, default=32, help="files per batch (default 32)")
    p.add_argument("--examples", type=Path, default=None,
                   help="folder of example images (default: the repository's examples/ when there is one)")
    return p


def build_parser(prog: str = "python -m demo.app") -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Start the viewer with parsed options; a clear message when the demo extra is missing."""
    try:
        from demo import app
    except ImportError as e:
        print(f"finpercep view needs the demo extra (Gradio): pip install 'finpercep[demo]' ({e})", file=sys.stderr)
        return 2
    return int(app.run(args) or 0)


def register(subparsers: Any) -> None:
    """``finpercep.commands`` entry point: add ``view`` to the ``finpercep`` command line."""
    p = subparsers.add_parser("view", help="start the Gradio PDM viewer (demo extra)", description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=run)
