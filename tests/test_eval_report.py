"""Per-class table, metrics.json (strict JSON, atomic), PR plot, and cheap imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssdkit.eval import VOCEvaluator, plot_pr, write_json
from ssdkit.eval.report import atomic_write

NAMES = ["cat", "dog", "bird"]


@pytest.fixture()
def result():
    t = {
        "boxes": np.array([[0, 0, 20, 20], [40, 40, 80, 80]], np.float32),
        "labels": np.array([1, 2]),
        "difficult": np.array([False, False]),
        "image_id": "a",
    }
    d = np.array([[1, 0.9, 0, 0, 20, 20], [1, 0.4, 40, 40, 80, 80], [3, 0.3, 5, 5, 9, 9]])
    ev = VOCEvaluator(NAMES)
    ev.update([d], [t])
    return ev.compute()


def test_summary_table(result) -> None:
    lines = result.summary_table().splitlines()
    assert lines[0].split() == ["class", "GT", "difficult", "dets", "TP", "FP", "AP", "max", "recall"]
    cat = lines[2].split()
    assert cat == ["cat", "1", "0", "2", "1", "1", "1.0000", "1.0000"]
    dog = lines[3].split()
    assert dog[:4] == ["dog", "1", "0", "0"] and dog[-2:] == ["0.0000", "0.0000"]
    assert lines[4].split()[-2:] == ["-", "-"]  # bird: no gt, AP undefined
    assert lines[5].startswith("mAP (voc07, IoU 0.5)") and "0.5000" in lines[5]
    assert "excluded from mAP" in lines[-1]
    assert result["mAP"] == result["map"] == result.map == 0.5
    assert "ap" in result and "mAP" in result and "nope" not in result


def test_metrics_json_is_strict_and_atomic(tmp_path: Path, result) -> None:
    path = result.write_json(tmp_path / "run" / "metrics.json", extra={"split": "val"}, arrays=True)
    text = path.read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert data["map"] == 0.5 and data["metric"] == "voc07" and data["split"] == "val"
    bird = data["per_class"][2]
    assert bird["ap"] is None and bird["max_recall"] is None and bird["recall"] == [None]
    assert data["per_class"][0]["precision"] == [1.0, 0.5]
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]

    # a failing writer leaves the previous file intact and no temporary file behind
    def boom(f) -> None:
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text() == text and sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]
    assert json.loads(write_json(tmp_path / "x.json", {"a": np.float32(1.5), "b": float("inf")}).read_text()) == {
        "a": 1.5,
        "b": None,
    }


def test_pr_plot(tmp_path: Path, result) -> None:
    png = plot_pr(result, tmp_path / "plots" / "pr.png", title="val")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # many classes (two colour cycles) also work
    names = [f"c{i}" for i in range(25)]
    ev = VOCEvaluator(names)
    rng = np.random.default_rng(0)
    boxes = np.sort(rng.uniform(0, 100, (25, 2, 2)), axis=1).transpose(0, 2, 1).reshape(25, 4)[:, [0, 2, 1, 3]]
    labels = np.arange(1, 26)
    ev.update([np.concatenate([labels[:, None], rng.random((25, 1)), boxes], 1)], [{"boxes": boxes, "labels": labels}])
    assert ev.compute().plot_pr(tmp_path / "pr25.png").stat().st_size > 5000


def test_import_is_cheap() -> None:
    code = (
        "import sys, ssdkit.eval; "
        "bad = [m for m in ('matplotlib', 'pycocotools', 'faster_coco_eval') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
