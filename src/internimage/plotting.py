"""Figures (matplotlib, an optional dependency imported when a figure is drawn): training curves, per-class IoU."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .engine import read_metrics
from .io import atomic_write

__all__ = ["plot_per_class", "plot_run"]

logger = logging.getLogger(__name__)


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
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return out


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the last row of each step (a resumed run re-logs the steps after its checkpoint)."""
    by_step = {r.get("step"): r for r in rows}
    return [by_step[k] for k in sorted(by_step, key=lambda s: s or 0)]


def plot_per_class(result: dict[str, Any], path: str | Path) -> Path | None:
    """Bar chart of per-class IoU, worst first (needs matplotlib; skipped with a log line without it)."""
    path = Path(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib not installed: no %s (pip install 'internimage[segmentation]')", path.name)
        return None
    items = sorted(((n, v["IoU"]) for n, v in result["per_class"].items() if v["IoU"] == v["IoU"]), key=lambda t: t[1])
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.18 * len(items) + 1)))
    ax.barh([n for n, _ in items], [100 * v for _, v in items], color="tab:blue")
    ax.axvline(100 * result["mIoU"], color="tab:red", linestyle="--", label=f"mIoU {100 * result['mIoU']:.1f}")
    ax.set_xlabel("IoU (%)")
    ax.set_xlim(0, 100)
    ax.tick_params(axis="y", labelsize=6 if len(items) > 40 else 8)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return path
