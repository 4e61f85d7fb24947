"""Learning-rate schedules, logs truncation on resume, RNG state round trip, plots and drawing."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ssdkit.engine.logging import RunLogger, read_csv, truncate_csv
from ssdkit.engine.schedule import LRSchedule
from ssdkit.engine.seed import capture_rng_state, restore_rng_state


def _sched(**kw: object) -> LRSchedule:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return LRSchedule(opt, **kw)  # type: ignore[arg-type]


def test_multistep_by_epoch_and_iteration() -> None:
    s = _sched(name="multistep", by="epoch", milestones=[2, 4], gamma=0.1)
    assert [s.lrs_at(e, 0)[0] for e in range(6)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    s = _sched(name="multistep", by="iter", milestones=[10], gamma=0.5)
    assert s.lrs_at(0, 9)[0] == pytest.approx(0.1) and s.lrs_at(3, 10)[0] == pytest.approx(0.05)


def test_step_cosine_warmup_floor() -> None:
    s = _sched(name="step", step_size=3, gamma=0.5, min_lr=0.03)
    assert [s.lrs_at(e, 0)[0] for e in (0, 2, 3, 6, 9)] == pytest.approx([0.1, 0.1, 0.05, 0.03, 0.03])
    s = _sched(name="cosine", by="iter", epochs=2, iters_per_epoch=5, min_lr=0.01)
    assert s.lrs_at(0, 0)[0] == pytest.approx(0.1) and s.lrs_at(2, 10)[0] == pytest.approx(0.01)
    assert s.lrs_at(1, 5)[0] == pytest.approx(0.01 + 0.09 * 0.5)
    s = _sched(name="constant", warmup_iters=4, warmup_factor=0.2)
    assert [s.lrs_at(0, i)[0] for i in range(5)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert s.step(0, 1) == pytest.approx(0.04) and s.optimizer.param_groups[0]["lr"] == pytest.approx(0.04)


def test_plateau_reduces_after_patience_and_round_trips_its_state() -> None:
    s = _sched(name="plateau", monitor="val_loss", patience=2, gamma=0.5)
    seq = [1.0, 0.9, 0.95, 0.92, 0.91, 0.5, None]
    reduced = [s.epoch_end({"val_loss": v}) for v in seq]
    assert reduced == [False, False, False, True, False, False, False]
    assert s.lrs_at(9, 0)[0] == pytest.approx(0.05)
    other = _sched(name="plateau", monitor="val_loss", patience=2, gamma=0.5)
    other.load_state_dict(s.state_dict())
    assert other.lrs_at(9, 0) == s.lrs_at(9, 0) and other.best == 0.5
    m = _sched(name="plateau", monitor="map", patience=1)
    assert [m.epoch_end({"map": v}) for v in (0.2, 0.3, 0.25)] == [False, False, True]


def test_rng_state_round_trip_is_weights_only_safe(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_csv_logs_append_and_drop_rows_after_the_resumed_checkpoint(tmp_path: Path) -> None:
    lg = RunLogger(tmp_path, tensorboard=False)
    for i in (1, 2, 3):
        lg.epoch({"epoch": i, "iteration": 10 * i, "lr": 0.1, "loss": 1.0 / i, "val_loss": None, "map": 0.5})
        lg.iteration({"epoch": i, "iteration": 10 * i, "lr": 0.1, "loss": 0.1 + i})
    lg.close()
    lg = RunLogger(tmp_path, resume_iteration=20, tensorboard=False)  # the checkpoint was at iteration 20
    lg.epoch({"epoch": 3, "iteration": 30, "lr": 0.1, "loss": 0.25})
    lg.close()
    rows = read_csv(tmp_path / "results.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[2]["loss"] == 0.25 and rows[0]["val_loss"] is None
    assert [r["iteration"] for r in read_csv(tmp_path / "iterations.csv")] == [10, 20]
    assert rows[1]["loss"] == 0.5 and math.isclose(rows[0]["map"], 0.5)
    assert truncate_csv(tmp_path / "missing.csv", 3) == 0


def test_plots_and_drawing(tmp_path: Path) -> None:
    from ssdkit.engine.evaluator import Sample
    from ssdkit.engine.plots import plot_losses, plot_map, plot_val_predictions
    from ssdkit.viz import caption, draw_detections, image_grid, to_numpy_image

    rows = [{"epoch": e, "iteration": 10 * e, "loss": 3.0 / e, "cls_loss": 2.0 / e, "box_loss": 1.0 / e,
             "val_loss": 2.5 / e if e % 2 == 0 else None, "map": 0.2 * e if e % 2 == 0 else None} for e in (1, 2, 3, 4)]
    iters = [{"epoch": 1 + i // 10, "iteration": i + 1, "loss": 3.0 - i / 20} for i in range(40)]
    assert plot_losses(rows, iters, tmp_path / "loss.png").stat().st_size > 1000
    assert plot_map(rows, tmp_path / "map.png").stat().st_size > 1000
    assert plot_map([], tmp_path / "empty.png").is_file()
    img = torch.zeros(3, 48, 64, dtype=torch.uint8)
    det = torch.tensor([[1, 0.9, 4, 4, 30, 30], [2, 0.1, 10, 10, 20, 20]])
    s = Sample(img, torch.tensor([[4.0, 4, 30, 30]]), torch.tensor([1]), det, "x")
    plot_val_predictions([s, s], ["a", "b"], tmp_path / "grid.png", score_threshold=0.5)
    from PIL import Image

    w, h = Image.open(tmp_path / "grid.png").size
    assert w > 4 * 256 and h > 256  # small images are enlarged for readability
    drawn = draw_detections(img, det, ["a", "b"], score_threshold=0.5)
    assert drawn.shape == (48, 64, 3) and drawn.any() and not to_numpy_image(img).any()
    assert caption(drawn, "t").shape[0] > 48 and image_grid([drawn, drawn[:10]], 2).shape[1] == 64 * 2 + 12
