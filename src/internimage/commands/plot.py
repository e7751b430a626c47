"""``internimage plot RUN_DIR``: loss / accuracy / lr curves of a run's ``metrics.jsonl`` to a PNG."""

from __future__ import annotations

import argparse

from ..plotting import plot_run

__all__ = ["plot_run"]


def _plot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run folder holding metrics.jsonl")
    parser.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/curves.png)")


def _run_plot(args: argparse.Namespace) -> int:
    print(plot_run(args.run_dir, args.output))
    return 0


COMMANDS = {"plot": (_plot_arguments, _run_plot)}
