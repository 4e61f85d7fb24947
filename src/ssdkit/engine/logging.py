"""Run logs: ``results.csv`` (one row per epoch), ``iterations.csv``, TensorBoard scalars, progress bar.

Both CSV files are appended across resumes. On resume, rows written after the checkpoint that is
resumed from (a run killed after logging but before its next checkpoint) are dropped first, so
each file reads as one uninterrupted run. Floats are written with ``repr`` (exact round trip).

Only rank 0 logs in a distributed run; the other ranks get a :class:`RunLogger` with
``enabled=False`` whose methods do nothing.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RunLogger", "RESULT_COLUMNS", "ITER_COLUMNS", "read_csv", "truncate_csv", "ProgressBar"]

log = logging.getLogger("ssdkit.engine")

RESULT_COLUMNS = ("epoch", "iteration", "lr", "loss", "cls_loss", "box_loss", "val_loss", "map", "time")
ITER_COLUMNS = ("epoch", "iteration", "lr", "loss", "cls_loss", "box_loss", "img_s")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return str(v)


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a run CSV with numbers parsed (empty cells -> ``None``)."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    with p.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            parsed: dict[str, Any] = {}
            for k, v in row.items():
                if v is None or v == "":
                    parsed[k] = None
                    continue
                try:
                    parsed[k] = int(v) if k in ("epoch", "iteration") else float(v)
                except ValueError:
                    parsed[k] = v
            rows.append(parsed)
    return rows


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def truncate_csv(path: str | Path, max_iteration: int) -> int:
    """Drop rows whose ``iteration`` is above ``max_iteration`` (atomic rewrite); returns rows dropped."""
    p = Path(path)
    if not p.is_file():
        return 0
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        rows = list(reader)
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    try:
        col = header.index("iteration")
    except ValueError:
        return 0
    keep = [r for r in body if r and r[col] != "" and int(float(r[col])) <= max_iteration]
    dropped = len(body) - len(keep)
    if dropped:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(keep)
        _atomic_text(p, buf.getvalue())
    return dropped


class _CSV:
    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = tuple(columns)
        new = not path.is_file() or path.stat().st_size == 0
        if not new:
            with path.open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            if header is not None and tuple(header) != self.columns:
                log.warning("%s has other columns %s; starting a new file", path, header)
                path.rename(path.with_suffix(".old.csv"))
                new = True
        self.file = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file, lineterminator="\n")
        if new:
            self.writer.writerow(self.columns)
            self.file.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        self.writer.writerow([_cell(row.get(c)) for c in self.columns])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class RunLogger:
    """CSV files and TensorBoard scalars of one run folder.

    Args:
        run_dir: the run folder.
        enabled: ``False`` on ranks other than 0 (everything becomes a no-op).
        resume_iteration: when resuming, the global iteration of the checkpoint; rows after it
            are dropped from the CSV files and TensorBoard events after it are purged.
        tensorboard: write TensorBoard event files under ``run_dir/tb``.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_iteration: int | None = None,
                 tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._results: _CSV | None = None
        self._iters: _CSV | None = None
        self._tb: Any = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        results, iters = self.run_dir / "results.csv", self.run_dir / "iterations.csv"
        if resume_iteration is not None:
            for p in (results, iters):
                n = truncate_csv(p, resume_iteration)
                if n:
                    log.info("%s: dropped %d row(s) logged after the checkpoint (iteration %d)", p.name, n,
                             resume_iteration)
        else:
            for p in (results, iters):
                p.unlink(missing_ok=True)
        self._results = _CSV(results, RESULT_COLUMNS)
        self._iters = _CSV(iters, ITER_COLUMNS)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resume_iteration is None else resume_iteration + 1
                self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed: no TensorBoard logs")

    def _write(self, target: _CSV | None, row: Mapping[str, Any], tags: Sequence[tuple[str, str]]) -> None:
        if not self.enabled:
            return
        assert target is not None
        target.write(row)
        if self._tb is not None:
            step = int(row["iteration"])
            for key, tag in tags:
                v = row.get(key)
                if v is not None and math.isfinite(float(v)):
                    self._tb.add_scalar(tag, float(v), step)

    def iteration(self, row: Mapping[str, Any]) -> None:
        """Log one iteration row (:data:`ITER_COLUMNS`) to ``iterations.csv`` and TensorBoard ``train/*``."""
        self._write(self._iters, row, [(k, f"train/{k}") for k in ("loss", "cls_loss", "box_loss", "lr", "img_s")])

    def epoch(self, row: Mapping[str, Any]) -> None:
        """Log one epoch row (:data:`RESULT_COLUMNS`) to ``results.csv`` and TensorBoard ``epoch/*``, ``val/*``."""
        self._write(self._results, row, [("loss", "epoch/loss"), ("cls_loss", "epoch/cls_loss"),
                                         ("box_loss", "epoch/box_loss"), ("lr", "epoch/lr"), ("val_loss", "val/loss"),
                                         ("map", "val/map")])
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        for c in (self._results, self._iters):
            if c is not None:
                c.close()
        if self._tb is not None:
            self._tb.close()
        self._results = self._iters = self._tb = None


class ProgressBar:
    """A tqdm bar per epoch (loss parts, lr, img/s in the postfix; tqdm shows the ETA).

    Disabled on ranks other than 0 or with ``enabled=False``; writes to stderr.
    """

    def __init__(self, total: int, initial: int, desc: str, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True, leave=True,
                            file=sys.stderr, mininterval=0.5)

    def update(self, postfix: Mapping[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
