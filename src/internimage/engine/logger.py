"""Metric logging: ``metrics.jsonl`` and ``metrics.csv`` in the run directory, plus TensorBoard when installed.

Rows are flat dicts with a ``split`` (``train``/``val``), ``step`` and ``epoch``; the CSV's columns are the union of
all keys seen so far (the file is rewritten when a new key appears, which happens rarely).

Rows are appended (a run logs thousands); every rewrite of a whole file goes through
:func:`internimage.io.atomic_write`. After a resume at step ``s``, :meth:`MetricLogger.rewind` drops the rows the
killed run logged past ``s`` (the resumed run logs them again), so no step appears twice.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..io import atomic_write

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
        self._replaceable: set[tuple[Any, Any]] = set()
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
        key = (row.get("split"), row.get("step"))
        if key in self._replaceable:
            # The resumed run re-logs a row of its resume step (e.g. the final evaluation): replace, not repeat.
            self._replaceable.discard(key)
            rows = [r for r in read_metrics(self.directory) if (r.get("split"), r.get("step")) != key]
            self._rewrite([*rows, row])
            self._log_tensorboard(row)
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        new = [k for k in row if k not in self._columns]
        if new:
            self._columns += new
            self._write_csv(read_metrics(self.directory))
        else:
            with open(self.csv, "a", newline="") as f:
                csv.DictWriter(f, self._columns).writerow(row)
        self._log_tensorboard(row)

    def rewind(self, step: int) -> None:
        """Forget the rows logged after ``step`` (a resume point): the resumed run logs those steps again.

        Rows of ``step`` itself are kept; if the resumed run logs one of them again it replaces the old one.
        A line cut by a kill is dropped too.
        """
        if not self.enabled or not self.jsonl.is_file():
            return
        rows = read_metrics(self.directory)
        kept = [r for r in rows if r.get("step", 0) <= step]
        self._replaceable = {(r.get("split"), r.get("step")) for r in kept if r.get("step") == step}
        if len(kept) != len(rows) or self._has_cut_line():
            logger.info(
                "metrics: dropped %d row(s) logged after step %d by the interrupted run", len(rows) - len(kept), step
            )
            self._rewrite(kept)

    def _has_cut_line(self) -> bool:
        data = self.jsonl.read_bytes()
        return bool(data) and not data.endswith(b"\n")

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        atomic_write(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        self._columns = list(dict.fromkeys(k for r in rows for k in r))
        self._write_csv(rows)

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        def write(path: Path) -> None:
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, self._columns)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.csv, write)

    def _log_tensorboard(self, row: dict[str, Any]) -> None:
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
    """All rows of ``metrics.jsonl`` in a run directory (a line cut by a kill is skipped)."""
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
