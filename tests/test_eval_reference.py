"""Slow, straightforward reference implementations for the evaluation tests (independent of ssdkit).

The other ``test_eval_*`` modules import these helpers; the tests at the end check the references
themselves on hand-computed curves.

``voc_eval_reference`` follows the Python port of the Pascal VOC devkit (``voc_eval.py``) line by
line: a per-class loop, a per-detection loop, and ``voc_ap`` written with explicit loops. The only
changes are parameters for the documented options: stable sort (the MATLAB devkit's ``sort``),
``>=`` or ``>``, the ``+1`` pixel convention on or off, and difficult handling.

``coco_ap50_101`` is COCO's 101-point interpolation of a precision/recall curve (``COCOeval.accumulate``).

``random_case`` makes random detection sets: a few gts per image (some difficult), detections as
noisy copies of gts (some with the wrong class, some duplicates) plus random boxes, integer
coordinates in some cases (IoU ties and IoUs of exactly 0.5 happen) and quantised scores in some
cases (score ties happen).
"""

from __future__ import annotations

import numpy as np


def voc_ap_reference(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_eval_reference(
    dets: list[np.ndarray],
    gts: list[dict],
    classname: int,
    ovthresh: float = 0.5,
    use_07_metric: bool = True,
    compare: str = ">=",
    plus_one: bool = True,
    ignore_difficult: bool = True,
) -> tuple[float, np.ndarray, np.ndarray, int]:
    """AP, recall, precision, npos of one class. ``dets[i]``: ``[K, 6]`` rows of image i (arrival order)."""
    c = 1.0 if plus_one else 0.0
    class_recs = {}
    npos = 0
    for i, g in enumerate(gts):
        m = np.asarray(g["labels"]) == classname
        bbox = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)[m]
        difficult = np.asarray(g.get("difficult", np.zeros(m.size, bool)), dtype=bool)[m]
        if not ignore_difficult:
            difficult = np.zeros_like(difficult)
        det = [False] * len(bbox)
        npos = npos + sum(~difficult)
        class_recs[i] = {"bbox": bbox, "difficult": difficult, "det": det}

    image_ids, confidence, BB = [], [], []
    for i, d in enumerate(dets):
        for row in np.asarray(d, dtype=np.float64).reshape(-1, 6):
            if row[0] == classname:
                image_ids.append(i)
                confidence.append(row[1])
                BB.append(row[2:6])
    confidence = np.array(confidence, dtype=np.float64)
    BB = np.array(BB, dtype=np.float64).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]

    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + c, 0.0)
            ih = np.maximum(iymax - iymin + c, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + c) * (bb[3] - bb[1] + c)
                + (BBGT[:, 2] - BBGT[:, 0] + c) * (BBGT[:, 3] - BBGT[:, 1] + c)
                - inters
            )
            overlaps = np.where(uni > 0, inters / np.where(uni > 0, uni, 1.0), 0.0)
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        hit = ovmax >= ovthresh if compare == ">=" else ovmax > ovthresh
        if hit:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0

    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = voc_ap_reference(rec, prec, use_07_metric)
    return ap, rec, prec, int(npos)


def coco_ap_101(rec: np.ndarray, prec: np.ndarray) -> float:
    """COCOeval.accumulate's interpolation of one curve: mean precision at 101 recall points."""
    rec_thrs = np.linspace(0.0, 1.0, 101)
    pr = list(prec)
    for i in range(len(pr) - 1, 0, -1):
        if pr[i] > pr[i - 1]:
            pr[i - 1] = pr[i]
    q = np.zeros(101)
    inds = np.searchsorted(rec, rec_thrs, side="left")
    for ri, pi in enumerate(inds):
        if pi < len(pr):
            q[ri] = pr[pi]
    return float(q.mean())


def random_case(
    rng: np.random.Generator,
    n_classes: int | None = None,
    n_images: int | None = None,
    integer: bool | None = None,
    tied_scores: bool | None = None,
    p_difficult: float = 0.2,
    max_gt: int = 5,
    max_random: int = 6,
) -> tuple[list[np.ndarray], list[dict]]:
    """Random (detections, targets) lists; see module docstring."""
    n_classes = int(rng.integers(1, 5)) if n_classes is None else n_classes
    n_images = int(rng.integers(1, 9)) if n_images is None else n_images
    integer = bool(rng.random() < 0.5) if integer is None else integer
    tied_scores = bool(rng.random() < 0.3) if tied_scores is None else tied_scores
    size = 60.0
    dets, tgts = [], []

    def fix(b: np.ndarray) -> np.ndarray:
        b = np.round(b) if integer else b
        x0, x1 = np.minimum(b[:, 0], b[:, 2]), np.maximum(b[:, 0], b[:, 2])
        y0, y1 = np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 1], b[:, 3])
        return np.stack([x0, y0, x1, y1], 1)

    for i in range(n_images):
        g = int(rng.integers(0, max_gt + 1))
        xy = rng.uniform(0, size, (g, 2))
        wh = rng.uniform(2, 25, (g, 2))
        gb = fix(np.concatenate([xy, xy + wh], 1))
        gl = rng.integers(1, n_classes + 1, g)
        gd = rng.random(g) < p_difficult
        tgts.append({"boxes": gb, "labels": gl, "difficult": gd, "image_id": f"img{i}"})
        rows = []
        for j in range(g):
            for _ in range(int(rng.integers(0, 3))):  # 0..2 copies: misses and duplicates
                noise = rng.normal(0, rng.choice([0.5, 2.0, 5.0]), 4)
                lab = gl[j] if rng.random() < 0.85 else rng.integers(1, n_classes + 1)
                rows.append((lab, gb[j] + noise))
        for _ in range(int(rng.integers(0, max_random + 1))):
            xy = rng.uniform(0, size, 2)
            rows.append((rng.integers(1, n_classes + 1), np.concatenate([xy, xy + rng.uniform(2, 25, 2)])))
        if rows:
            labs = np.array([r[0] for r in rows], dtype=np.float64)
            boxes = fix(np.array([r[1] for r in rows], dtype=np.float64))
            scores = rng.integers(0, 5, len(rows)) / 4.0 if tied_scores else rng.random(len(rows))
            d = np.concatenate([labs[:, None], scores[:, None], boxes], 1)
        else:
            d = np.zeros((0, 6))
        dets.append(d)
    return dets, tgts


# ----------------------------------------------------------------- sanity of the references themselves
def test_reference_voc_ap_known_curves() -> None:
    rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert abs(voc_ap_reference(rec, prec, use_07_metric=False) - (0.5 + 0.5 * 2 / 3)) < 1e-12
    assert abs(voc_ap_reference(rec, prec, use_07_metric=True) - 28 / 33) < 1e-12
    assert abs(coco_ap_101(np.array([1.0]), np.array([1.0])) - 1.0) < 1e-12


def test_reference_voc_eval_duplicate_and_difficult() -> None:
    gts = [
        {
            "boxes": np.array([[0, 0, 9, 9], [20, 20, 29, 29.0]]),
            "labels": np.array([1, 1]),
            "difficult": np.array([False, True]),
        }
    ]
    dets = [np.array([[1, 0.9, 0, 0, 9, 9], [1, 0.8, 0, 0, 9, 9], [1, 0.7, 20, 20, 29, 29]], float)]
    ap, rec, prec, npos = voc_eval_reference(dets, gts, 1, use_07_metric=False)
    assert npos == 1 and ap == 1.0
    assert rec.tolist() == [1.0, 1.0, 1.0] and prec.tolist() == [1.0, 0.5, 0.5]
