"""``internimage plot RUN_DIR``: loss / accuracy / lr curves of a run's ``metrics.jsonl`` to a PNG."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..engine import read_metrics


def plot_run(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Draw train loss, validation metrics and lr against the optimizer step.

    Returns:
        The PNG path (default ``RUN_DIR/curves.png``).
    """
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError("plotting needs matplotlib: pip install 'internimage[plot]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(f"no metrics.jsonl rows in {run_dir}")
    train = _dedupe([r for r in rows if r.get("split") == "train"])
    val = _dedupe([r for r in rows if r.get("split") == "val"])
    val_keys = [k for k in ("top1", "ema_top1", "top5", "mIoU", "bbox_mAP") if any(k in r for r in val)]
    panels = [("train loss", train, ["loss"]), ("validation", val, val_keys), ("learning rate", train, ["lr"])]
    panels = [p for p in panels if p[1] and p[2]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, data, keys) in zip(axes[0], panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in data if isinstance(r.get(key), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1 or title == "validation":
            ax.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = Path(output) if output else run_dir / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the last row of each step (a resumed run re-logs the steps after its checkpoint)."""
    by_step = {r.get("step"): r for r in rows}
    return [by_step[k] for k in sorted(by_step, key=lambda s: s or 0)]


def _plot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run folder holding metrics.jsonl")
    parser.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/curves.png)")


def _run_plot(args: argparse.Namespace) -> int:
    print(plot_run(args.run_dir, args.output))
    return 0


COMMANDS = {"plot": (_plot_arguments, _run_plot)}
