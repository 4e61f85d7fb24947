"""VOCEvaluator: hand-computed cases, options, bad inputs, and agreement with a slow devkit reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_eval_reference import random_case, voc_eval_reference

from ssdkit.eval import VOCEvaluator, voc_ap

NAMES = ["cat", "dog", "bird"]


def det(*rows: tuple[float, ...]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def tgt(boxes: list, labels: list, difficult: list | None = None, image_id: str | None = None) -> dict:
    t = {"boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4), "labels": np.array(labels, dtype=np.int64)}
    if difficult is not None:
        t["difficult"] = np.array(difficult, dtype=bool)
    if image_id is not None:
        t["image_id"] = image_id
    return t


def evaluate(dets: list, tgts: list, metric: str = "voc07", **kw: object):
    ev = VOCEvaluator(NAMES, metric=metric, **kw)
    ev.update(dets, tgts)
    return ev.compute()


A, B = [10, 10, 49, 49], [60, 60, 99, 99]


# ------------------------------------------------------------------ hand-computed answers
@pytest.mark.parametrize("metric", ["voc07", "voc10"])
def test_perfect_predictions_ap_one(metric: str) -> None:
    r = evaluate([det((1, 0.9, *A), (2, 0.8, *B))], [tgt([A, B], [1, 2], image_id="x")], metric)
    assert r.ap[0] == 1.0 and r.ap[1] == 1.0 and math.isnan(r.ap[2])
    assert r.map == 1.0  # class 3 has no gt: excluded by default
    assert r.tp.tolist() == [1, 1, 0] and r.fp.tolist() == [0, 0, 0] and r.n_gt.tolist() == [1, 1, 0]


@pytest.mark.parametrize("metric", ["voc07", "voc10"])
def test_all_false_positives_ap_zero(metric: str) -> None:
    r = evaluate([det((1, 0.9, *B), (1, 0.5, 200, 200, 220, 220))], [tgt([A], [1])], metric)
    assert r.ap[0] == 0.0 and r.fp[0] == 2 and r.tp[0] == 0
    assert r.precision[0].tolist() == [0.0, 0.0] and r.recall[0].tolist() == [0.0, 0.0]


def test_duplicates_are_false_positives() -> None:
    # gts A, B of class 1; dets: on A (0.9), on A again (0.8, duplicate), on B (0.7)
    # tp = [1, 0, 1], fp = [0, 1, 0] -> recall [.5, .5, 1], precision [1, .5, 2/3]
    dets = [det((1, 0.9, *A), (1, 0.8, 11, 11, 49, 49), (1, 0.7, *B))]
    tgts = [tgt([A, B], [1, 1])]
    r10 = evaluate(dets, tgts, "voc10")
    assert r10.recall[0].tolist() == [0.5, 0.5, 1.0]
    np.testing.assert_allclose(r10.precision[0], [1.0, 0.5, 2 / 3], rtol=0, atol=1e-15)
    # all-point: 0.5 * 1 + 0.5 * max(precision at recall 1) = 0.5 + 1/3
    assert r10.ap[0] == pytest.approx(0.5 + 1 / 3, abs=1e-12)
    assert r10.n_duplicates[0] == 1 and r10.fp[0] == 1
    # 11-point: t in 0..0.5 (6 points) -> 1, t in 0.6..1 (5 points) -> 2/3: 28/33
    assert evaluate(dets, tgts, "voc07").ap[0] == pytest.approx(28 / 33, abs=1e-12)


def test_best_gt_is_chosen_over_all_gts_including_matched_ones() -> None:
    # det 2 overlaps A best (IoU ~0.64) and B enough (IoU ~0.52), but A is taken: the devkit
    # does not fall back to B, it counts a duplicate
    g1, g2 = [0, 0, 99, 99], [30, 0, 129, 99]
    d2 = [10, 0, 109, 99]
    r = evaluate([det((1, 0.9, *g1), (1, 0.8, *d2))], [tgt([g1, g2], [1, 1])], "voc10")
    assert r.tp[0] == 1 and r.n_duplicates[0] == 1 and r.ap[0] == 0.5


def test_difficult_only_ground_truth() -> None:
    # class 1 has only a difficult gt: undefined AP (NaN), detection on it ignored, not in mAP
    dets = [det((1, 0.9, *A), (2, 0.8, *B))]
    tgts = [tgt([A, B], [1, 2], difficult=[True, False])]
    r = evaluate(dets, tgts)
    assert math.isnan(r.ap[0]) and r.n_gt[0] == 0 and r.n_difficult[0] == 1
    assert r.n_ignored[0] == 1 and r.tp[0] == 0 and r.fp[0] == 0 and r.n_detections[0] == 1
    assert r.map == 1.0
    assert evaluate(dets, tgts, classes_without_gt="zero").map == pytest.approx(1 / 3)
    assert math.isnan(evaluate(dets, tgts, classes_without_gt="nan").map)
    # treated as an ordinary gt when difficult objects are not ignored
    r2 = evaluate(dets, tgts, ignore_difficult=False)
    assert r2.ap[0] == 1.0 and r2.n_gt[0] == 1


def test_detection_on_difficult_keeps_its_place_in_the_arrays() -> None:
    # det on difficult (0.9) is neither TP nor FP but, as in the devkit, occupies an entry
    dets = [det((1, 0.9, *A), (1, 0.8, *B))]
    r = evaluate(dets, [tgt([A, B], [1, 1], difficult=[True, False])], "voc10")
    assert r.precision[0].tolist() == [0.0, 1.0] and r.recall[0].tolist() == [0.0, 1.0]
    assert r.ap[0] == 1.0 and r.n_ignored[0] == 1


@pytest.mark.parametrize("metric", ["voc07", "voc10"])
def test_class_without_predictions_has_ap_zero(metric: str) -> None:
    r = evaluate([det((1, 0.9, *A))], [tgt([A, B], [1, 2])], metric)
    assert r.ap[1] == 0.0 and r.n_detections[1] == 0 and r.max_recall[1] == 0.0
    assert r.precision[1].size == 0 and r.recall[1].size == 0
    assert r.map == 0.5


def test_class_without_ground_truth() -> None:
    # class 3: two detections, no gt anywhere: AP undefined, FPs still counted
    r = evaluate([det((1, 0.9, *A), (3, 0.8, *B), (3, 0.7, *A))], [tgt([A], [1])])
    assert math.isnan(r.ap[2]) and r.fp[2] == 2 and r.n_gt[2] == 0 and math.isnan(r.max_recall[2])
    assert np.isnan(r.recall[2]).all() and r.precision[2].tolist() == [0.0, 0.0]
    assert r.map == 1.0  # mean over classes with gt: cat (AP 1) and ... dog has no gt either
    assert r.ap_by_class["cat"] == 1.0


def test_no_images_at_all() -> None:
    r = VOCEvaluator(NAMES).compute()
    assert np.isnan(r.ap).all() and math.isnan(r.map) and r.n_images == 0


@pytest.mark.parametrize("metric,expected", [("voc10", 0.5), ("voc07", 0.5)])
def test_tied_scores_keep_arrival_order(metric: str, expected: float) -> None:
    fp_img = (det((1, 0.5, *B)), tgt([], [], image_id="fp"))
    tp_img = (det((1, 0.5, *A)), tgt([A], [1], image_id="tp"))
    # arrival FP then TP: precision [0, 1/2], recall [0, 1] -> AP 0.5 (both metrics)
    ev = VOCEvaluator(NAMES, metric=metric)
    ev.update([fp_img[0]], [fp_img[1]])
    ev.update([tp_img[0]], [tp_img[1]])
    assert ev.compute().ap[0] == pytest.approx(expected, abs=1e-12)
    # arrival TP then FP: precision [1, 1/2], recall [1, 1] -> AP 1
    ev = VOCEvaluator(NAMES, metric=metric)
    ev.update([tp_img[0], fp_img[0]], [tp_img[1], fp_img[1]])
    assert ev.compute().ap[0] == 1.0
    # within one image, row order decides
    r = evaluate([det((1, 0.5, *B), (1, 0.5, *A))], [tgt([A], [1])], metric)
    assert r.ap[0] == pytest.approx(expected, abs=1e-12)
    assert evaluate([det((1, 0.5, *A), (1, 0.5, *B))], [tgt([A], [1])], metric).ap[0] == 1.0


def test_plus_one_pixel_convention() -> None:
    # gt [0,0,1,1], det [0.5,0,1.5,1]: continuous IoU 0.5/1.5 = 1/3 (miss);
    # inclusive pixels: widths 2, intersection 1.5 x 2 = 3, union 4 + 4 - 3 = 5 -> 0.6 (hit)
    dets, tgts = [det((1, 0.9, 0.5, 0, 1.5, 1))], [tgt([[0, 0, 1, 1]], [1])]
    assert evaluate(dets, tgts).ap[0] == 1.0
    assert evaluate(dets, tgts, plus_one=False).ap[0] == 0.0


def test_iou_exactly_at_threshold() -> None:
    # inclusive: gt 10x10 = 100 px, det 10x5 = 50 px inside it -> IoU exactly 0.5
    dets, tgts = [det((1, 0.9, 0, 0, 9, 4))], [tgt([[0, 0, 9, 9]], [1])]
    assert evaluate(dets, tgts).ap[0] == 1.0  # MATLAB devkit: >=
    assert evaluate(dets, tgts, iou_compare=">").ap[0] == 0.0  # Python port: >
    # continuous coordinates: 10 x 5 inside 10 x 10 -> 0.5 as well; (continuous IoU of the
    # first pair is 36/81, below the threshold: the convention matters here too)
    dets_c, tgts_c = [det((1, 0.9, 0, 0, 10, 5))], [tgt([[0, 0, 10, 10]], [1])]
    assert evaluate(dets_c, tgts_c, plus_one=False).ap[0] == 1.0
    assert evaluate(dets_c, tgts_c, plus_one=False, iou_compare=">").ap[0] == 0.0
    assert evaluate(dets, tgts, plus_one=False).ap[0] == 0.0


def test_voc07_float_versus_rational_thresholds() -> None:
    # 10 gts, 3 TPs first then FPs: recall peaks at exactly 3/10. The float threshold
    # 0.30000000000000004 (np.arange) is not reached; the exact fraction 3/10 is.
    boxes = [[20 * i, 0, 20 * i + 9, 9] for i in range(10)]
    rows = [(1, 0.9 - 0.1 * i, *boxes[i]) for i in range(3)] + [(1, 0.1, 500, 500, 510, 510)]
    dets, tgts = [det(*rows)], [tgt(boxes, [1] * 10)]
    assert evaluate(dets, tgts).ap[0] == pytest.approx(3 / 11, abs=1e-15)
    assert evaluate(dets, tgts, voc07_thresholds="rational").ap[0] == pytest.approx(4 / 11, abs=1e-15)
    assert evaluate(dets, tgts, "voc10").ap[0] == pytest.approx(0.3, abs=1e-15)


def test_both_metrics_from_one_pass_and_cache_invalidation() -> None:
    dets = [det((1, 0.9, *A), (1, 0.8, 11, 11, 49, 49), (1, 0.7, *B))]
    ev = VOCEvaluator(NAMES)
    ev.update(dets, [tgt([A, B], [1, 1])])
    assert ev.compute().ap[0] == pytest.approx(28 / 33)
    assert ev.compute("voc10").ap[0] == pytest.approx(0.5 + 1 / 3)
    ev.update([det((2, 0.9, *A))], [tgt([A], [2])])  # cached matching must be refreshed
    assert ev.compute().ap[1] == 1.0 and len(ev) == 2
    ev.reset()
    assert len(ev) == 0


def test_input_formats_are_equivalent() -> None:
    rng = np.random.default_rng(3)
    dets, tgts = random_case(rng, n_classes=3, n_images=6, tied_scores=False)
    ref = evaluate(dets, tgts, "voc10").ap
    torch_dets = [torch.from_numpy(d).float() for d in dets]
    torch_tgts = [
        {
            **t,
            "boxes": torch.from_numpy(t["boxes"]),
            "labels": torch.from_numpy(t["labels"]),
            "difficult": torch.from_numpy(t["difficult"]),
        }
        for t in tgts
    ]
    dict_dets = [{"boxes": d[:, 2:], "scores": d[:, 1], "labels": d[:, 0].astype(int)} for d in dets]
    # float32 rounding may move an IoU across 0.5 in principle; this seed does not
    np.testing.assert_array_equal(evaluate(torch_dets, torch_tgts, "voc10").ap, ref)
    np.testing.assert_array_equal(evaluate(dict_dets, tgts, "voc10").ap, ref)
    # one image at a time, in reverse order: same result (no tied scores)
    ev = VOCEvaluator(NAMES, metric="voc10")
    for d, t in reversed(list(zip(dets, tgts, strict=True))):
        ev.update(d, t)
    np.testing.assert_array_equal(ev.compute().ap, ref)


def test_voc_ap_function() -> None:
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]), "voc07") == pytest.approx(28 / 33)
    assert voc_ap(np.array([]), np.array([]), "voc10") == 0.0


# ------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    "dets,tgts,match",
    [
        ([np.zeros((2, 5))], [tgt([A], [1])], r"shape \[K, 6\]"),
        ([det((0, 0.9, *A))], [tgt([A], [1])], r"class id must be an integer in 1\.\.3"),
        ([det((4, 0.9, *A))], [tgt([A], [1])], r"class id"),
        ([det((1.5, 0.9, *A))], [tgt([A], [1])], r"class id"),
        ([det((1, float("nan"), *A))], [tgt([A], [1])], r"score must be finite"),
        ([det((1, 0.9, 0, 0, float("inf"), 5))], [tgt([A], [1])], r"finite"),
        ([det((1, 0.9, 10, 0, 5, 5))], [tgt([A], [1])], r"xmax >= xmin"),
        ([det()], [tgt([A], [7])], r"target of image .* class id"),
        ([det()], [{"boxes": np.zeros((2, 4)), "labels": np.ones(3)}], r"labels must have shape \[2\]"),
        ([det()], [{"boxes": np.zeros((2, 3)), "labels": np.ones(2)}], r"shape \[G, 4\]"),
        ([det()], [{"labels": np.ones(2)}], r"missing \['boxes'\]"),
        ([det(), det()], [tgt([A], [1])], r"2 detection entries for 1 targets"),
        ([det(), det()], [tgt([A], [1], image_id="a"), tgt([B], [1], image_id="a")], r"already given"),
        ([{"boxes": np.zeros((1, 4)), "scores": np.ones(2), "labels": np.ones(1)}], [tgt([A], [1])], r"scores"),
    ],
)
def test_bad_inputs_raise_value_error(dets: list, tgts: list, match: str) -> None:
    ev = VOCEvaluator(NAMES)
    with pytest.raises(ValueError, match=match):
        ev.update(dets, tgts)
    assert len(ev) == 0  # nothing of a bad batch is kept


def test_duplicate_image_id_across_batches_and_error_names_the_image() -> None:
    ev = VOCEvaluator(NAMES)
    ev.update([det((1, 0.9, *A))], [tgt([A], [1], image_id="000005")])
    with pytest.raises(ValueError, match=r"'000005' was already given"):
        ev.update([det()], [tgt([B], [1], image_id="000005")])
    with pytest.raises(ValueError, match=r"image 'x7' \(batch item 1\), row 1: score"):
        ev.update(
            [det(), det((1, 0.5, *A), (1, float("nan"), *B))], [tgt([], [], image_id="x6"), tgt([], [], image_id="x7")]
        )
    assert len(ev) == 1


@pytest.mark.parametrize(
    "kw",
    [
        {"metric": "voc12"},
        {"iou_threshold": 0.0},
        {"iou_threshold": 1.5},
        {"iou_compare": "=="},
        {"classes_without_gt": "skip"},
        {"voc07_thresholds": "exact"},
    ],
)
def test_bad_options(kw: dict) -> None:
    with pytest.raises(ValueError):
        VOCEvaluator(NAMES, **kw)


# ------------------------------------------------------------------ agreement with the devkit reference
@pytest.mark.parametrize("seed", range(10))
def test_agrees_with_devkit_reference_on_random_cases(seed: int) -> None:
    """100 random cases per seed (1,000 in all), every class, both metrics, all matching options.

    Integer coordinates make IoU ties and IoUs of exactly 0.5 frequent, quantised scores make
    score ties frequent; the reference uses a stable sort, so results must be identical (the
    1e-9 tolerance is never needed: the arithmetic is the same)."""
    rng = np.random.default_rng(1000 + seed)
    for case in range(100):
        dets, tgts = random_case(rng, n_classes=4)
        opts = {
            "iou_compare": ">=" if case % 2 else ">",
            "plus_one": case % 3 != 0,
            "ignore_difficult": case % 5 != 0,
            "iou_threshold": [0.5, 0.5, 0.3, 0.7][case % 4],
        }
        names = ["a", "b", "c", "d"]
        ev = VOCEvaluator(names, **opts)
        start = 0
        while start < len(dets):  # random batching: arrival order is what matters
            k = int(rng.integers(1, 4))
            ev.update(dets[start : start + k], tgts[start : start + k])
            start += k
        for metric in ("voc07", "voc10"):
            res = ev.compute(metric)
            for c in range(1, 5):
                ap, rec, prec, npos = voc_eval_reference(
                    dets,
                    tgts,
                    c,
                    ovthresh=opts["iou_threshold"],
                    use_07_metric=metric == "voc07",
                    compare=opts["iou_compare"],
                    plus_one=opts["plus_one"],
                    ignore_difficult=opts["ignore_difficult"],
                )
                assert res.n_gt[c - 1] == npos
                np.testing.assert_allclose(res.precision[c - 1], prec, rtol=0, atol=1e-9)
                if npos > 0:
                    assert abs(res.ap[c - 1] - ap) <= 1e-9, (seed, case, metric, c)
                    np.testing.assert_allclose(res.recall[c - 1], rec, rtol=0, atol=1e-9)
                else:
                    assert math.isnan(res.ap[c - 1])


def test_rational_voc07_thresholds_match_exact_fractions() -> None:
    from fractions import Fraction

    rng = np.random.default_rng(77)
    for _ in range(100):
        dets, tgts = random_case(rng, n_classes=2, max_gt=10)
        ev = VOCEvaluator(["a", "b"], voc07_thresholds="rational")
        ev.update(dets, tgts)
        res = ev.compute()
        for c in (1, 2):
            _, rec, prec, npos = voc_eval_reference(dets, tgts, c)
            if npos == 0:
                continue
            tp = np.rint(rec * npos).astype(int)
            ps = [
                max(
                    (p for p, n in zip(prec, tp, strict=True) if Fraction(int(n), npos) >= Fraction(k, 10)), default=0.0
                )
                for k in range(11)
            ]
            assert abs(res.ap[c - 1] - sum(ps) / 11) <= 1e-12
