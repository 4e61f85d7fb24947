"""Error breakdown: one hand-built image with every category, invariants on random cases."""

from __future__ import annotations

import numpy as np
import pytest
from test_eval_reference import random_case

from ssdkit.eval import VOCEvaluator, error_breakdown
from ssdkit.eval.breakdown import CATEGORIES

NAMES = ["cat", "dog"]
A, B, C, D = [10, 10, 49, 49], [60, 60, 99, 99], [110, 10, 149, 49], [200, 200, 239, 239]
TARGET = {
    "boxes": np.array([A, B, C, D], np.float32),
    "labels": np.array([1, 2, 1, 1]),
    "difficult": np.array([False, False, False, True]),
    "image_id": "img",
}
DETS = np.array(
    [
        [1, 0.95, *A],  # cat on cat A: TP
        [1, 0.90, 11, 10, 49, 49],  # cat on A again: duplicate
        [1, 0.85, *D],  # cat on the difficult cat D: ignored
        [1, 0.80, *B],  # cat on dog B (IoU 1): wrong class
        [2, 0.75, 60, 60, 99, 75],  # dog on B, IoU 40*16/1600 = 0.4: mislocalised
        [1, 0.70, 300, 300, 320, 320],  # nothing there: background
        [2, 0.60, 10, 10, 49, 30],  # dog on cat A, IoU 40*21/1600 = 0.525: wrong class
        [1, 0.55, 110, 10, 149, 25],  # cat near cat C (IoU 0.4) but on nothing else: mislocalised
    ],
    dtype=np.float64,
)


def test_every_category_by_hand() -> None:
    b = error_breakdown([DETS], [TARGET], NAMES)
    assert b.n_gt.tolist() == [2, 1]  # D is difficult
    assert b.n_detections.tolist() == [6, 2]
    assert b.tp.tolist() == [1, 0]
    assert b.missed.tolist() == [1, 1]  # C (cat) and B (dog)
    assert b.ignored.tolist() == [1, 0]
    assert b.duplicate.tolist() == [1, 0]
    assert b.wrong_class.tolist() == [1, 1]
    assert b.mislocalised.tolist() == [1, 1]
    assert b.background.tolist() == [1, 0]
    assert b.totals()["n_detections"] == 8


def test_score_threshold_and_thresholds() -> None:
    b = error_breakdown([DETS], [TARGET], NAMES, score_threshold=0.72)
    assert b.n_detections.tolist() == [4, 1] and b.background.tolist() == [0, 0]
    assert b.mislocalised.tolist() == [0, 1] and b.missed.tolist() == [1, 1]
    # with a 0.45 cut-off for mislocalisation the 0.4 boxes become background
    b2 = error_breakdown([DETS], [TARGET], NAMES, mislocalised_min_iou=0.45)
    assert b2.mislocalised.tolist() == [0, 0] and b2.background.tolist() == [2, 1]
    with pytest.raises(ValueError):
        error_breakdown([DETS], [TARGET], NAMES, mislocalised_min_iou=0.6)


def test_wrong_class_takes_precedence_over_mislocalised() -> None:
    t = {"boxes": np.array([[0, 0, 99, 99], [0, 50, 99, 99]], np.float32), "labels": np.array([1, 2])}
    # a cat box 100 x 49 px inside both gts: IoU 4900/5000 = 0.98 with the dog and 4900/10000 =
    # 0.49 with the cat (right class, poor box): the wrong class wins
    d = np.array([[1, 0.9, 0, 51, 99, 99]])
    b = error_breakdown([d], [t], NAMES)
    assert b.wrong_class.tolist() == [1, 0] and b.mislocalised.tolist() == [0, 0]


def test_invariants_on_random_cases_and_evaluator_method() -> None:
    rng = np.random.default_rng(21)
    for _ in range(40):
        dets, tgts = random_case(rng, n_classes=3)
        ev = VOCEvaluator(["a", "b", "c"])
        ev.update(dets, tgts)
        b = ev.error_breakdown()
        r = ev.compute()
        total = sum(getattr(b, k) for k in CATEGORIES)
        np.testing.assert_array_equal(total, b.n_detections)
        np.testing.assert_array_equal(b.tp, r.tp)
        np.testing.assert_array_equal(b.duplicate, r.n_duplicates)
        np.testing.assert_array_equal(b.ignored, r.n_ignored)
        np.testing.assert_array_equal(b.wrong_class + b.mislocalised + b.background + b.duplicate, r.fp)
        np.testing.assert_array_equal(b.missed, r.n_gt - r.tp)


def test_breakdown_report() -> None:
    b = error_breakdown([DETS], [TARGET], NAMES)
    table = b.summary_table()
    assert "wrong cls" in table and table.splitlines()[-1].split()[0] == "total"
    d = b.to_dict()
    assert d["totals"]["background"] == 1 and d["per_class"][1]["class"] == "dog"
