"""The built-in demo: the synthetic digits dataset and ``ssdkit demo`` end to end (tiny settings)."""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from ssdkit.cli.main import main
from ssdkit.demo import DIGITS, SHAPES, make_demo_dataset, render_image


def _boxes(xml: Path) -> list[tuple[str, list[int]]]:
    root = ET.parse(xml).getroot()
    return [(o.findtext("name") or "", [int(o.findtext(f"bndbox/{k}") or 0) for k in ("xmin", "ymin", "xmax", "ymax")])
            for o in root.iter("object")]


def test_dataset_layout_boxes_and_determinism(tmp_path: Path) -> None:
    info = make_demo_dataset(tmp_path / "a", n_train=6, n_val=3, seed=3, classes=DIGITS)
    root = tmp_path / "a"
    assert info["train"] == 6 and info["val"] == 3 and info["classes"] == list(DIGITS)
    assert (root / "ImageSets/Main/train.txt").read_text().split() == [f"{i:06d}" for i in range(6)]
    assert (root / "ImageSets/Main/val.txt").read_text().split() == [f"{i:06d}" for i in range(6, 9)]
    total = 0
    for xml in sorted((root / "Annotations").glob("*.xml")):
        objs = _boxes(xml)
        assert 1 <= len(objs) <= 4
        for name, (x0, y0, x1, y1) in objs:
            assert name in DIGITS and 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
        total += len(objs)
    assert total == info["boxes"]
    make_demo_dataset(tmp_path / "b", n_train=6, n_val=3, seed=3, classes=DIGITS)
    for f in ("Annotations/000004.xml", "JPEGImages/000004.jpg"):
        assert (root / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    stamp = (root / "demo.json").stat().st_mtime_ns
    make_demo_dataset(root, n_train=6, n_val=3, seed=3, classes=DIGITS)  # same arguments: reused, not rewritten
    assert (root / "demo.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("classes", [SHAPES, DIGITS])
def test_objects_do_not_overlap_and_vary_in_size(classes: tuple[str, ...]) -> None:
    heights = []
    for seed in range(30):
        img, objs = render_image(np.random.default_rng(seed), classes=classes)
        assert {name for name, _ in objs} <= set(classes)
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        boxes = [b for _, b in objs]
        for i, a in enumerate(boxes):
            heights.append(a[3] - a[1])
            for b in boxes[i + 1:]:
                assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])
    assert min(heights) < 22 and max(heights) >= 35


def test_demo_command_end_to_end_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # configs/demo.yaml
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--images", "16", "--quiet", "demo.n_val=4", "train.epochs=1",
               "train.batch_size=8", "model.width=4", "train.tensorboard=false"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "demo mAP@0.5 (voc07):" in text and f"run folder:  {out}" in text
    for name in ("best.pt", "results.csv", "loss.png", "map.png", "val_predictions.png", "pr_curves.png",
                 "metrics.json", "data/demo.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "predictions").glob("*.png"))) == 4
    assert json.loads((out / "metrics.json").read_text())["final"]["n_images"] == 4


@pytest.mark.parametrize(("args", "message"), [(["--minutes", "0"], "--minutes must be > 0"),
                                               (["--images", "0"], "--images must be >= 1"),
                                               (["demo.n_vall=3"], "demo.n_vall: unknown key")])
def test_demo_bad_values(args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(["demo", "--out", str(tmp_path / "d"), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_full_demo_reaches_080_map_within_10_minutes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    minutes = (time.perf_counter() - t0) / 60
    m = json.loads((tmp_path / "demo" / "metrics.json").read_text())["final"]["map"]
    assert m >= 0.80 and minutes <= 10, (m, minutes)
