"""Metric logging: ``metrics.jsonl`` and ``metrics.csv`` in the run directory, plus TensorBoard when installed.

Rows are flat dicts with a ``split`` (``train``/``val``), ``step`` and ``epoch``; the CSV's columns are the union of
all keys seen so far (the file is rewritten when a new key appears, which happens rarely).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricLogger", "read_metrics"]

logger = logging.getLogger(__name__)


class MetricLogger:
    """Append metric rows (main process only; other ranks pass ``enabled=False``).

    Args:
        directory: Run directory.
        enabled: Write anything at all.
        tensorboard: Also write TensorBoard events under ``directory/tb`` if ``tensorboard`` is importable.
    """

    def __init__(self, directory: str | os.PathLike, enabled: bool = True, tensorboard: bool = True) -> None:
        self.directory = Path(directory)
        self.enabled = enabled
        self.jsonl = self.directory / "metrics.jsonl"
        self.csv = self.directory / "metrics.csv"
        self._columns: list[str] = []
        self._tb = None
        if not enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.csv.is_file():
            with open(self.csv, newline="") as f:
                self._columns = next(csv.reader(f), [])
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.directory / "tb"))
            except ImportError:
                logger.debug("tensorboard not installed; CSV/JSONL logs only")

    def log(self, row: dict[str, Any]) -> None:
        """Write one row (values: numbers or strings)."""
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        new = [k for k in row if k not in self._columns]
        if new:
            self._columns += new
            rows = read_metrics(self.directory)
            tmp = self.csv.with_suffix(".csv.tmp")
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, self._columns)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, self.csv)
        else:
            with open(self.csv, "a", newline="") as f:
                csv.DictWriter(f, self._columns).writerow(row)
        if self._tb is not None:
            split = row.get("split", "train")
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tb.add_scalar(f"{split}/{key}", value, row.get("step", 0))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of ``metrics.jsonl`` in a run directory (rows past a resume point are kept as written)."""
    path = Path(directory) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    logger.warning("skipping a truncated line in %s", path)
    return rows
