"""COCOEvaluator: backends agree, ids map back, detections.json format, crowd/difficult handling,
and the exact relation between ssdkit's VOC curves and pycocotools' AP50.

Which quantities can be compared exactly between the VOC code and COCOeval (test below):

- COCO matches each detection to the best *still unmatched* gt with IoU >= t, VOC to the best gt
  overall (a duplicate if taken). Both coincide when no detection has two same-class gts of its
  image at IoU >= 0.5, which holds when same-class gts of an image are disjoint: we generate gts
  in separate grid cells.
- With continuous coordinates (``plus_one=False``), ``>=``, no difficult/crowd, fewer detections
  per image than ``maxDets`` and area range ``all``, both produce the same TP/FP sequence per
  class, so the same precision/recall points (COCO's precision is ``tp / (tp + fp + spacing(1))``,
  equal to ~1e-16). COCO's AP50 is then the 101-point interpolation of *our* curve, COCO's recall
  equals our final recall, and COCO's AP50 mean equals the mean of those per-class values. The
  VOC07/VOC10 numbers themselves are different interpolations and are not compared to COCO.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_eval_reference import coco_ap_101, random_case

from ssdkit.eval import COCOEvaluator, VOCEvaluator
from ssdkit.eval.coco import STAT_NAMES

NAMES4 = ["a", "b", "c", "d"]


def big_random_case(rng: np.random.Generator, n_images: int = 40) -> tuple[list, list]:
    """Boxes of all COCO size ranges (the small random_case boxes are all 'small')."""
    dets, tgts = random_case(rng, n_classes=4, n_images=n_images, integer=False)
    scale = rng.uniform(1, 8, n_images)
    for d, t, s in zip(dets, tgts, scale, strict=True):
        d[:, 2:] *= s
        t["boxes"] = t["boxes"] * s
    return dets, tgts


def run(dets: list, tgts: list, backend: str, **kw: object):
    ev = COCOEvaluator(NAMES4, backend=backend, **kw)
    ev.update(dets, tgts)
    return ev, ev.compute()


def test_backends_agree_on_random_sets() -> None:
    rng = np.random.default_rng(7)
    for _ in range(12):
        dets, tgts = big_random_case(rng)  # tied scores in some sets, difficult -> crowd
        for t in tgts[::3]:
            t["iscrowd"] = rng.random(len(t["labels"])) < 0.3
        _, a = run(dets, tgts, "pycocotools")
        _, b = run(dets, tgts, "faster_coco_eval")
        assert list(a.stats) == list(STAT_NAMES)
        for k in STAT_NAMES:
            assert abs(a.stats[k] - b.stats[k]) <= 1e-6, k
        np.testing.assert_allclose(a.ap, b.ap, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.ap50, b.ap50, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(a.n_gt, b.n_gt)


def test_auto_backend_is_faster_coco_eval_and_bad_backend_raises() -> None:
    assert COCOEvaluator(NAMES4).backend == "faster_coco_eval"
    with pytest.raises(ValueError, match="backend"):
        COCOEvaluator(NAMES4, backend="detectron")


def _disjoint_case(rng: np.random.Generator, n_images: int = 30) -> tuple[list, list]:
    """gts in separate 100-px cells (same-class gts never overlap), no difficult, < 100 dets/image."""
    dets, tgts = [], []
    for i in range(n_images):
        cells = rng.permutation(16)[: int(rng.integers(0, 7))]
        xy = np.stack([cells % 4, cells // 4], 1) * 100.0 + rng.uniform(0, 30, (cells.size, 2))
        gb = np.concatenate([xy, xy + rng.uniform(20, 65, (cells.size, 2))], 1)
        gl = rng.integers(1, 5, cells.size)
        rows = []
        for b, lab in zip(gb, gl, strict=True):
            for _ in range(int(rng.integers(0, 3))):
                rows.append(
                    [lab if rng.random() < 0.9 else rng.integers(1, 5), rng.random(), *(b + rng.normal(0, 6, 4))]
                )
        for _ in range(int(rng.integers(0, 8))):
            p = rng.uniform(0, 350, 2)
            rows.append([rng.integers(1, 5), rng.random(), *p, *(p + rng.uniform(10, 60, 2))])
        d = np.array(rows, dtype=np.float64).reshape(-1, 6)
        d[:, 2:] = np.concatenate([np.minimum(d[:, 2:4], d[:, 4:6]), np.maximum(d[:, 2:4], d[:, 4:6])], 1)
        dets.append(d)
        tgts.append({"boxes": gb, "labels": gl, "image_id": i})
    return dets, tgts


@pytest.mark.parametrize("seed", range(4))
def test_voc_curves_reproduce_pycocotools_ap50(seed: int) -> None:
    dets, tgts = _disjoint_case(np.random.default_rng(seed))
    voc = VOCEvaluator(NAMES4, plus_one=False, iou_compare=">=", metric="voc10")
    voc.update(dets, tgts)
    v = voc.compute()
    _, c = run(dets, tgts, "pycocotools")
    for k in range(4):
        if v.n_gt[k] == 0:
            assert math.isnan(c.ap50[k])
            continue
        assert abs(coco_ap_101(v.recall[k], v.precision[k]) - c.ap50[k]) <= 1e-9
        assert abs(v.max_recall[k] - c.max_recall[k]) <= 1e-12
    per_class = [coco_ap_101(v.recall[k], v.precision[k]) for k in range(4) if v.n_gt[k] > 0]
    assert abs(np.mean(per_class) - c.stats["AP50"]) <= 1e-9
    np.testing.assert_array_equal(v.n_gt, c.n_gt)


def test_difficult_becomes_crowd_and_is_ignored() -> None:
    boxes = np.array([[0, 0, 50, 50], [100, 100, 150, 150]], dtype=np.float32)
    t = {"boxes": boxes, "labels": np.array([1, 1]), "difficult": np.array([False, True]), "image_id": 1}
    # the highest-scoring detection sits on the difficult gt: ignored, so AP50 stays 1
    d = np.array([[1, 0.9, 100, 100, 150, 150], [1, 0.8, 0, 0, 50, 50]])
    for backend in ("pycocotools", "faster_coco_eval"):
        ev, r = run([d], [t], backend)
        assert r.stats["AP50"] == pytest.approx(1.0) and r.n_gt[0] == 1
        assert ev.ground_truth_json()["annotations"][1]["iscrowd"] == 1
    # a missed difficult gt costs nothing; a missed ordinary one halves the recall
    t2 = {**t, "difficult": np.array([False, False])}
    assert run([d[1:]], [t], "pycocotools")[1].stats["AP50"] == pytest.approx(1.0)
    assert run([d[1:]], [t2], "pycocotools")[1].stats["AP50"] == pytest.approx(0.5, abs=0.01)


def test_empty_detections_give_zero_not_a_crash() -> None:
    t = {"boxes": np.array([[0, 0, 50, 50.0]]), "labels": np.array([2]), "image_id": 3}
    for backend in ("pycocotools", "faster_coco_eval"):
        _, r = run([np.zeros((0, 6))], [t], backend)
        assert r.stats["AP"] == 0.0 and r.ap[1] == 0.0 and math.isnan(r.ap[0])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        COCOEvaluator(NAMES4).compute()


def test_ids_map_back_and_detections_json(tmp_path: Path) -> None:
    t = [
        {"boxes": np.array([[10, 20, 40, 60.0]]), "labels": np.array([2]), "image_id": "000005"},
        {"boxes": np.zeros((0, 4)), "labels": np.zeros(0), "image_id": "000012"},
    ]
    d = [np.array([[2, 0.75, 10, 20, 40, 60]]), np.array([[4, 0.5, 1, 2, 4, 8]])]
    ev = COCOEvaluator(NAMES4, label_to_cat_id={1: 1, 2: 3, 3: 8, 4: 90})
    ev.update(d, t)
    assert ev.image_id_mapping() == {"000005": 5, "000012": 12}
    path = ev.write_detections(tmp_path / "out" / "detections.json")
    got = json.loads(path.read_text())
    assert got == [
        {"image_id": 5, "category_id": 3, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.75},
        {"image_id": 12, "category_id": 90, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5},
    ]
    assert [p.name for p in path.parent.iterdir()] == ["detections.json"]  # no temp file left
    r = ev.compute()
    assert r.ap[1] == pytest.approx(1.0) and math.isnan(r.ap[3])
    # sequence form of the mapping and non-numeric ids (numbered in arrival order)
    ev2 = COCOEvaluator(NAMES4, label_to_cat_id=[1, 3, 8, 90])
    ev2.update(d, [{**t[0], "image_id": "cat.jpg"}, {**t[1], "image_id": "dog.jpg"}])
    assert ev2.image_id_mapping() == {"cat.jpg": 1, "dog.jpg": 2}
    assert [x["category_id"] for x in ev2.detections_json()] == [3, 90]
    ev3 = COCOEvaluator(NAMES4, image_id_map=lambda s: 100 + int(s))
    ev3.update(d, t)
    assert [x["image_id"] for x in ev3.detections_json()] == [105, 112]


def test_bad_category_mappings() -> None:
    with pytest.raises(ValueError, match="lacks labels"):
        COCOEvaluator(NAMES4, label_to_cat_id={1: 1, 2: 2})
    with pytest.raises(ValueError, match="same category id"):
        COCOEvaluator(NAMES4, label_to_cat_id=[1, 1, 2, 3])
    with pytest.raises(ValueError, match=r"4 ids for 4|3 ids for 4"):
        COCOEvaluator(NAMES4, label_to_cat_id=[1, 2, 3])


def test_ground_truth_from_an_annotations_json(tmp_path: Path) -> None:
    """Original category ids (by name) and image ids (by file name) come back from the JSON."""
    rng = np.random.default_rng(11)
    dets, tgts = big_random_case(rng, n_images=10)
    for t in tgts:
        t["difficult"] = np.zeros(len(t["labels"]), bool)
    cat_ids = [17, 4, 23, 9]
    built = COCOEvaluator(NAMES4, label_to_cat_id=cat_ids, backend="pycocotools")
    built.update(dets, [{**t, "image_id": i + 1} for i, t in enumerate(tgts)])
    ref = built.compute()
    ds = built.ground_truth_json()
    for im in ds["images"]:
        im["file_name"] = f"images/img{im['id'] - 1}.jpg"
    ds["images"].append({"id": 999, "file_name": "images/unused.jpg"})  # not received: not evaluated
    ds["categories"] = list(reversed(ds["categories"]))
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(ds))
    for backend in ("pycocotools", "faster_coco_eval"):
        ev = COCOEvaluator(NAMES4, backend=backend, annotations=path)  # image ids are "img0", ... (stems)
        ev.update(dets, tgts)
        r = ev.compute()
        for k in STAT_NAMES:
            assert abs(r.stats[k] - ref.stats[k]) <= 1e-6
        assert {x["category_id"] for x in ev.detections_json()} <= set(cat_ids)
        assert r.n_images == 10
    with pytest.raises(ValueError, match="matches no image"):
        ev = COCOEvaluator(NAMES4, annotations=path)
        ev.update(dets[:1], [{**tgts[0], "image_id": "nope"}])
        ev.compute()


def test_result_helpers(tmp_path: Path) -> None:
    dets, tgts = big_random_case(np.random.default_rng(5), n_images=8)
    _, r = run(dets, tgts, "faster_coco_eval")
    table = r.summary_table()
    assert "AP50" in table and all(n in table for n in NAMES4)
    assert r["AP50"] == r.stats["AP50"] and r.map == r.stats["AP"]
    data = json.loads(r.write_json(tmp_path / "metrics.json", extra={"checkpoint": "x.pt"}).read_text())
    assert data["metric"] == "coco" and data["checkpoint"] == "x.pt" and len(data["per_class"]) == 4
    png = r.plot_pr(tmp_path / "pr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
