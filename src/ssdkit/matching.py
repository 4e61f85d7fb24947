"""Anchor matching and target encoding: the Keras ``SSDInputEncoder`` semantics, batched.

Per image (reference section 2):

1. every anchor starts as background (label 0);
2. greedy bipartite matching: repeatedly take the highest-IoU (ground truth, anchor) pair among the
   unmatched ones (ties: smallest ground-truth index, then smallest anchor index); every ground truth
   gets exactly one anchor, even at IoU 0;
3. ``matching='multi'``: every other anchor whose best IoU is ``>= pos_iou_threshold`` takes its
   best ground truth (ties: smallest ground-truth index);
4. unmatched anchors whose best IoU is ``>= neg_iou_limit`` are neutral (label -1);
5. positives get centroid offsets (:func:`ssdkit.boxes.encode`), the rest zeros.

How it is fast without changing a single label: IoU is computed in float64 with the same formula as
the reference, but only for (ground truth, anchor) pairs that *can* reach the smallest threshold that
matters. Anchors of one size sit on a regular grid, so for each ground truth and anchor size the
window of centres where ``IoU >= t`` is possible is a few cells; everything outside has ``IoU < t``
and cannot change a label. The greedy bipartite step runs on those pairs by rounds of *locally
dominant* pairs (a pair that is the best for both its ground truth and its anchor is committed; this
gives exactly the sequential greedy result for a strict order), and the rare ground truth left with
no pair ``>= t`` finishes the greedy on a dense IoU row. ``algorithm='dense'`` computes every pair and
is kept for testing; both give identical results.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .anchors import AnchorGenerator, SizeLike, _pair
from .boxes import DEFAULT_VARIANCES

__all__ = ["SSDTargetEncoder", "validate_targets"]

_BIG = torch.iinfo(torch.int64).max


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _on(a: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(a).to(device)


def _group_argmax(group: np.ndarray, size: int, value: np.ndarray, tie: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the highest ``value`` and the lowest ``tie`` key among the entries at it.

    Args:
        group: ``[K]`` int64 group of each entry, in ``[0, size)``.
        value: ``[K]`` float64 (IoU, so ``>= 0``); tie: ``[K]`` int64.

    Returns:
        ``(best [size] float64, -1 for an empty group; low [size] int64, _BIG for an empty group)``.
        This is the reference's order restricted to one gt or one anchor: IoU descending, then index.
    """
    best = np.full(size, -1.0)
    np.maximum.at(best, group, value)
    at = value == best[group]
    low = np.full(size, _BIG, dtype=np.int64)
    np.minimum.at(low, group[at], tie[at])
    return best, low


def _box_fields(cxcywh: np.ndarray) -> np.ndarray:
    """``[M, 4]`` float64 ``(cx, cy, w, h)`` -> ``[5, M]`` ``(x1, y1, x2, y2, area)``, field-major.

    Corners from centroids exactly as the reference computes them before its IoU.
    """
    cx, cy, w, h = cxcywh.T
    f = np.empty((5, cxcywh.shape[0]), dtype=np.float64)
    f[0], f[1], f[2], f[3] = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    f[4] = (f[2] - f[0]) * (f[3] - f[1])
    return f


def validate_targets(
    boxes: Sequence[Any],
    labels: Sequence[Any],
    n_classes: int,
    degenerate: str = "error",
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Check a batch of ground truth; return it concatenated.

    Returns ``(boxes float64 [M, 4], labels int64 [M], counts int64 [B], n_removed)`` where ``M`` is
    the total number of kept boxes and ``counts`` the boxes per image.

    Raises ``ValueError`` naming the image index and box index for: shape mismatches, non-finite
    coordinates, labels outside ``1..n_classes`` and (with ``degenerate='error'``) boxes with
    ``xmax <= xmin`` or ``ymax <= ymin``. With ``degenerate='remove'`` such boxes are dropped and counted.
    """
    gb, gl, counts, removed = _validate_np(boxes, labels, n_classes, degenerate)
    return (torch.from_numpy(gb).to(device), torch.from_numpy(gl).to(device),
            torch.from_numpy(counts).to(device), removed)


def _array(x: Any, boxes: bool) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.bool) or x.dtype.is_complex:
            x = x.to(torch.float64 if boxes else torch.int64)
        return x.cpu().numpy()
    a = np.asarray(x, dtype=np.float64) if boxes else np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"dtype {a.dtype} is not numeric")
    return a


def _validate_np(
    boxes: Sequence[Any], labels: Sequence[Any], n_classes: int, degenerate: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """:func:`validate_targets` in numpy (the encoder's path: ~32 small arrays, where numpy's per-call
    cost is a fraction of torch's); returns ``(boxes float64, labels int64, counts int64, n_removed)``."""
    if degenerate not in ("error", "remove"):
        raise ValueError(f"degenerate must be 'error' or 'remove', got {degenerate!r}")
    if len(boxes) != len(labels):
        raise ValueError(f"got boxes for {len(boxes)} images but labels for {len(labels)}")
    bl: list[np.ndarray] = []
    ll: list[np.ndarray] = []
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        try:
            b, lab = _array(b, True), _array(lab, False)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"image {i}: boxes/labels are not numeric arrays ({exc})") from None
        if b.size == 0 and lab.size == 0:
            b, lab = b.reshape(0, 4), lab.reshape(0)
        if b.ndim != 2 or b.shape[-1] != 4:
            raise ValueError(f"image {i}: boxes must have shape (G, 4) xyxy, got {tuple(b.shape)}")
        if lab.ndim != 1 or lab.shape[0] != b.shape[0]:
            raise ValueError(
                f"image {i}: labels must have shape ({b.shape[0]},) to match the boxes, got {tuple(lab.shape)}"
            )
        bl.append(b)
        ll.append(lab)
    counts = np.array([b.shape[0] for b in bl], dtype=np.int64)
    if not bl:
        return np.zeros((0, 4), dtype=np.float64), np.zeros(0, dtype=np.int64), counts, 0
    # one conversion for the whole batch (concatenate promotes mixed dtypes)
    gb = np.concatenate(bl).astype(np.float64, copy=False)
    lab_raw = np.concatenate(ll)
    if lab_raw.dtype == np.bool_:
        lab_raw = lab_raw.astype(np.int64)

    def where(mask: np.ndarray) -> tuple[int, int]:
        j = int(np.flatnonzero(mask)[0])
        img = int(np.searchsorted(np.cumsum(counts), j, side="right"))
        return img, j - int(counts[:img].sum())

    if lab_raw.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(lab_raw) | (lab_raw != np.round(lab_raw))
        if bad.any():
            i, j = where(bad)
            raise ValueError(f"image {i}, box {j}: label {ll[i][j].item()} is not an integer class id")
    gl = lab_raw.astype(np.int64, copy=False)
    finite = np.isfinite(gb).all(axis=1)
    if not finite.all():
        i, j = where(~finite)
        raise ValueError(f"image {i}, box {j}: non-finite coordinates {bl[i][j].tolist()}")
    bad_lab = (gl < 1) | (gl > n_classes)
    if bad_lab.any():
        i, j = where(bad_lab)
        raise ValueError(f"image {i}, box {j}: label {int(ll[i][j])} is out of range 1..{n_classes} (0 is background)")
    degen = (gb[:, 2] - gb[:, 0] <= 0) | (gb[:, 3] - gb[:, 1] <= 0)
    removed = 0
    if degen.any():
        if degenerate == "error":
            i, j = where(degen)
            raise ValueError(
                f"image {i}, box {j}: degenerate box {bl[i][j].tolist()} (xmax <= xmin or ymax <= ymin); "
                "fix the annotation or use degenerate='remove'"
            )
        removed = int(degen.sum())
        img = np.repeat(np.arange(len(bl)), counts)
        counts = counts - np.bincount(img[degen], minlength=len(bl))
        gb, gl = gb[~degen], gl[~degen]
    return gb, gl, counts, removed


@dataclass
class _Groups:
    """Anchors grouped by size; each group is a regular grid of centres (or a single dense row).

    numpy arrays: the window geometry runs on the CPU whatever the anchors' device (it is a few
    thousand small-array operations, where numpy's per-call cost is a fraction of torch's).
    Pair fields hold ``(x, y)`` in their last dimension.
    """

    origin: np.ndarray  # [Q, 2] float64 centre of cell (0, 0)
    step: np.ndarray  # [Q, 2] cell spacing (1.0 along an axis with one cell)
    last: np.ndarray  # [Q, 2] float64 index of the last column / row
    ncols: np.ndarray  # [Q] int64 columns in the table of the group
    max_wh: np.ndarray  # [Q, 2] float64 largest width / height in the group
    min_area: np.ndarray  # [Q] float64
    dense: np.ndarray  # [Q] bool: not a grid, always take every member
    any_dense: bool
    offset: np.ndarray  # [Q] int64 start of the group's table in `table`
    table: np.ndarray  # [sum ny*nx] int64 anchor indices, row-major per group


def _build_groups(cxcywh: np.ndarray, force_dense: bool) -> _Groups:
    n = cxcywh.shape[0]
    scale = max(float(np.abs(cxcywh).max()), 1e-12)
    q = np.round(cxcywh / scale * 1e9).astype(np.int64)
    if force_dense:
        inverse = np.zeros(n, dtype=np.int64)
    else:
        _, inverse = np.unique(q[:, 2:], axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
    fields: dict[str, list] = {k: [] for k in ("x0", "dx", "y0", "dy", "nx", "ny", "mw", "mh", "ma", "dense", "off")}
    tables: list[np.ndarray] = []
    offset = 0
    for gi in range(int(inverse.max()) + 1 if n else 0):
        members = np.nonzero(inverse == gi)[0]
        cx, cy = cxcywh[members, 0], cxcywh[members, 1]
        ux, col = np.unique(q[members, 0], return_inverse=True)
        uy, row = np.unique(q[members, 1], return_inverse=True)
        nx, ny = len(ux), len(uy)
        is_grid = not force_dense and nx * ny == len(members)
        if is_grid:
            cell = row.reshape(-1) * nx + col.reshape(-1)
            is_grid = len(np.unique(cell)) == len(members)
        if is_grid:
            xs = np.zeros(nx)
            xs[col.reshape(-1)] = cx
            ys = np.zeros(ny)
            ys[row.reshape(-1)] = cy
            dx = (xs[-1] - xs[0]) / (nx - 1) if nx > 1 else 1.0
            dy = (ys[-1] - ys[0]) / (ny - 1) if ny > 1 else 1.0
            regular = (nx < 3 or np.allclose(np.diff(xs), dx, rtol=1e-6, atol=1e-9)) and (
                ny < 3 or np.allclose(np.diff(ys), dy, rtol=1e-6, atol=1e-9)
            )
            is_grid = regular and dx > 0 and dy > 0
        if is_grid:
            table = np.empty(nx * ny, dtype=np.int64)
            table[cell] = members
            fields["x0"].append(xs[0]), fields["dx"].append(dx), fields["nx"].append(nx)
            fields["y0"].append(ys[0]), fields["dy"].append(dy), fields["ny"].append(ny)
            fields["dense"].append(False)
        else:
            table = members.astype(np.int64)
            fields["x0"].append(0.0), fields["dx"].append(1.0), fields["nx"].append(len(members))
            fields["y0"].append(0.0), fields["dy"].append(1.0), fields["ny"].append(1)
            fields["dense"].append(True)
        w, h = cxcywh[members, 2], cxcywh[members, 3]
        fields["mw"].append(w.max()), fields["mh"].append(h.max()), fields["ma"].append((w * h).min())
        fields["off"].append(offset)
        offset += len(table)
        tables.append(table)

    def f64(*keys: str) -> np.ndarray:
        arr = np.array([fields[k] for k in keys], dtype=np.float64).T.copy()  # [Q, len(keys)]
        return arr[:, 0].copy() if len(keys) == 1 else arr

    dense = np.array(fields["dense"], dtype=bool)
    return _Groups(
        origin=f64("x0", "y0"), step=f64("dx", "dy"),
        last=np.array([fields["nx"], fields["ny"]], dtype=np.float64).T.copy() - 1,
        ncols=np.array(fields["nx"], dtype=np.int64), max_wh=f64("mw", "mh"), min_area=f64("ma"),
        dense=dense, any_dense=bool(dense.any()), offset=np.array(fields["off"], dtype=np.int64),
        table=np.concatenate(tables) if tables else np.zeros(0, dtype=np.int64),
    )


class SSDTargetEncoder:
    """Matches ground truth to anchors and encodes the training targets for a batch.

    Args:
        anchors: ``Tensor[N, 4]`` anchors ``(cx, cy, w, h)`` (normalised when ``normalize_coords``),
            or an :class:`~ssdkit.anchors.AnchorGenerator` (then its float64 anchors and its
            ``normalize_coords`` are used). Encoding runs on the anchors' device.
        image_size: network input ``H`` or ``(H, W)`` in pixels; ground truth is given in these pixels.
        n_classes: number of positive classes (labels are ``1..n_classes``; 0 is background).
        matching: ``'multi'`` (bipartite + threshold) or ``'bipartite'``.
        pos_iou_threshold: IoU for additional positives in ``'multi'`` matching.
        neg_iou_limit: unmatched anchors with best IoU ``>=`` this are neutral (-1).
        variances: the 4 offset variances.
        degenerate: ``'error'`` raises on ``xmax <= xmin`` / ``ymax <= ymin`` boxes; ``'remove'`` drops
            them and counts them in :attr:`n_removed`.
        normalize_coords: whether the anchors are normalised; ``None`` takes it from the generator
            (or ``True`` for a tensor).
        algorithm: ``'auto'`` (windowed pairs, exact) or ``'dense'`` (all pairs; for testing).
    """

    def __init__(
        self,
        anchors: Tensor | AnchorGenerator,
        image_size: SizeLike,
        n_classes: int,
        matching: str = "multi",
        pos_iou_threshold: float = 0.5,
        neg_iou_limit: float = 0.3,
        variances: Sequence[float] = DEFAULT_VARIANCES,
        degenerate: str = "error",
        normalize_coords: bool | None = None,
        algorithm: str = "auto",
    ) -> None:
        if isinstance(anchors, AnchorGenerator):
            if normalize_coords is None:
                normalize_coords = anchors.normalize_coords
            a64 = anchors.anchors(dtype=torch.float64)
        else:
            a = torch.as_tensor(anchors)
            if a.dim() != 2 or a.shape[-1] != 4:
                raise ValueError(f"anchors must have shape (N, 4) cxcywh, got {tuple(a.shape)}")
            a64 = a.to(torch.float64)
        if a64.shape[0] == 0:
            raise ValueError("the anchor set is empty: nothing to match ground truth to")
        if not bool(torch.isfinite(a64).all()) or bool((a64[:, 2:] <= 0).any()):
            raise ValueError("anchors must be finite with positive width and height")
        if matching not in ("multi", "bipartite"):
            raise ValueError(f"matching must be 'multi' or 'bipartite', got {matching!r}")
        if degenerate not in ("error", "remove"):
            raise ValueError(f"degenerate must be 'error' or 'remove', got {degenerate!r}")
        if algorithm not in ("auto", "dense"):
            raise ValueError(f"algorithm must be 'auto' or 'dense', got {algorithm!r}")
        if int(n_classes) < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        v = tuple(float(x) for x in variances)
        if len(v) != 4 or any(x <= 0 for x in v):
            raise ValueError(f"variances must be 4 positive numbers, got {variances}")

        self.image_size = _pair(image_size, "image_size")
        self.n_classes = int(n_classes)
        self.matching = matching
        self.pos_iou_threshold = float(pos_iou_threshold)
        self.neg_iou_limit = float(neg_iou_limit)
        self.variances = v
        self.degenerate = degenerate
        self.normalize_coords = True if normalize_coords is None else bool(normalize_coords)
        self.algorithm = algorithm
        self.n_removed = 0
        self._tls = threading.local()

        self.device = a64.device
        self.anchors64 = a64
        self._anchors_np = a64.cpu().numpy()
        self.num_anchors = a64.shape[0]
        # Corners exactly as the reference computes them from centroids, so IoU values are bit-identical;
        # field-major [5, N] (x1, y1, x2, y2, area) so each field gathers contiguously.
        self._anchor_fields = _box_fields(a64.cpu().numpy())
        # The smallest IoU that can change a label; pairs below it only matter for leftover bipartite rows.
        t = min(self.pos_iou_threshold, self.neg_iou_limit) if matching == "multi" else self.neg_iou_limit
        self._t = t
        dense = algorithm == "dense" or t <= 0.0
        self._dense = dense
        self._groups = _build_groups(a64.cpu().numpy(), force_dense=dense)

    # ------------------------------------------------------------------ public API
    @property
    def anchors(self) -> Tensor:
        """The anchors as ``Tensor[N, 4]`` float32 ``(cx, cy, w, h)``."""
        return self.anchors64.float()

    def __call__(self, boxes: Sequence[Any], labels: Sequence[Any]) -> tuple[Tensor, Tensor]:
        """Encode a batch.

        Args:
            boxes: one ``Tensor[G_i, 4]`` per image, xyxy in input pixels (``G_i`` may be 0).
            labels: one ``Tensor[G_i]`` int per image, values ``1..n_classes``.

        Returns:
            ``labels``: ``Tensor[B, N]`` int64, 0 background, -1 neutral (ignored), ``k`` class;
            ``box_targets``: ``Tensor[B, N, 4]`` float32 offsets (zeros where not positive).
        """
        labels_out, targets, _ = self._encode(boxes, labels, want_matches=False)
        return labels_out, targets

    def encode(self, boxes: Sequence[Any], labels: Sequence[Any]) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`__call__`, plus ``matched_gt: Tensor[B, N]`` int64 (per-image ground-truth index, -1 none)."""
        labels_out, targets, matched = self._encode(boxes, labels, want_matches=True)
        assert matched is not None
        return labels_out, targets, matched

    def __getstate__(self) -> dict[str, Any]:
        # the per-thread scratch buffer is a cache: drop it so the encoder pickles (spawned DataLoader
        # workers, DDP) and gets a fresh one on the other side
        state = self.__dict__.copy()
        del state["_tls"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tls = threading.local()

    def _scratch(self, size: int) -> np.ndarray:
        # A fresh multi-MB buffer per call costs more in page faults than the whole matching; keep one
        # per thread (DataLoader workers are processes and get their own).
        buf = getattr(self._tls, "buf", None)
        if buf is None or buf.size < size:
            buf = np.empty(size, dtype=np.int64)
            self._tls.buf = buf
        return buf[:size]

    def _encode(
        self, boxes: Sequence[Any], labels: Sequence[Any], want_matches: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        gb, gl, counts, removed = _validate_np(boxes, labels, self.n_classes, self.degenerate)
        self.n_removed += removed
        bsz = counts.size
        n = self.num_anchors
        dev = self.device
        # outputs are built in numpy (np.zeros maps zero pages instead of writing 5 MB) and moved once
        labels_np = np.zeros(bsz * n, dtype=np.int64)
        targets_np = np.zeros((bsz * n, 4), dtype=np.float32)
        n_gt = gb.shape[0]
        if n_gt == 0:
            matched = torch.full((bsz, n), -1, dtype=torch.int64, device=dev) if want_matches else None
            return _on(labels_np.reshape(bsz, n), dev), _on(targets_np.reshape(bsz, n, 4), dev), matched

        # The matching itself is sparse bookkeeping on ~100 pairs per box: it runs in numpy on the CPU
        # (a fraction of torch's per-call cost at these sizes) and only the dense outputs are written
        # on the anchors' device.
        img = np.repeat(np.arange(bsz, dtype=np.int64), counts)
        gidx = np.arange(n_gt, dtype=np.int64) - (np.cumsum(counts) - counts)[img]
        if self.normalize_coords:
            h, w = self.image_size
            gb = gb / np.array([w, h, w, h], dtype=np.float64)
        # corners -> centroids -> corners, as the reference does before its IoU
        cent = np.stack(
            ((gb[:, 0] + gb[:, 2]) / 2, (gb[:, 1] + gb[:, 3]) / 2, gb[:, 2] - gb[:, 0], gb[:, 3] - gb[:, 1]), -1
        )
        gf = _box_fields(cent)

        # ---- greedy bipartite matching on windowed pairs, by decreasing IoU levels
        gt_match = np.full(n_gt, -1, dtype=np.int64)  # anchor per gt
        used = np.zeros(bsz * n, dtype=bool)
        scratch = self._scratch(bsz * n)
        everyone = np.arange(n_gt, dtype=np.int64)
        pm, pa, pv, _ = self._candidate_pairs(cent, gf, everyone, np.full(n_gt, self._t, dtype=np.float64))
        if not self._dense:
            keep = np.flatnonzero(pv >= self._t)  # these also decide multi/neutral below
            pm, pa, pv = pm[keep], pa[keep], pv[keep]
        key = img[pm] * n + pa
        self._greedy_first(pm, key, pv, gidx, gt_match, used, n, scratch)
        if not self._dense:
            # Leftover ground truth (small or odd-shaped boxes) continues the greedy below t: first at
            # half of the smallest best-IoU estimate of the image's leftovers, then at any overlap.
            # Each level is exact because every pair of the image at or above its level is present.
            for level in (0, 1):
                left = np.flatnonzero(gt_match < 0)
                if left.size == 0:
                    break
                if level == 0:
                    t_img = np.full(bsz, np.inf)
                    np.minimum.at(t_img, img[left], self._best_iou_estimate(cent, gf, left))
                    t_left = np.minimum(t_img[img[left]] / 2, self._t)
                else:
                    t_left = np.zeros(left.size, dtype=np.float64)
                qm, qa, qv, qt = self._candidate_pairs(cent, gf, left, t_left)
                qkey = img[qm] * n + qa
                ok = np.flatnonzero((qv >= qt) & (qv > 0) & ~used[qkey])
                qm = qm[ok]
                self._greedy_sparse(qm, qkey[ok], qv[ok], gidx[qm], gt_match, used, n, scratch)
        left = np.flatnonzero(gt_match < 0)
        if left.size:  # ground truth that overlaps no free anchor at all
            self._greedy_dense(left, img, gidx, gf, gt_match, used.reshape(bsz, n))

        # ---- neutral, then multi positives, then bipartite positives (each write overrides the last)
        neutral = key[pv >= self.neg_iou_limit]
        bip = img * n + gt_match
        if self.matching == "multi":
            # each anchor's best ground truth among pairs >= pos (ties: lowest gt); all of an anchor's
            # pairs at its best IoU are present when that IoU is >= pos
            strong = np.flatnonzero(pv >= self.pos_iou_threshold)
            skey, sv, sm = key[strong], pv[strong], pm[strong]
            aid = self._compact(skey, scratch)
            _, best_m = _group_argmax(aid, skey.size, sv, sm)
            rep = np.flatnonzero(aid == np.arange(skey.size))  # one pair per anchor
            sel = rep[~used[skey[rep]]]  # bipartite matches win their anchor
            pos_key = np.concatenate((skey[sel], bip))
            pos_m = np.concatenate((best_m[sel], everyone))
        else:
            pos_key, pos_m = bip, everyone

        labels_np[neutral] = -1
        labels_np[pos_key] = gl[pos_m]
        # the offsets of boxes.encode (same formula, float64, then float32), in numpy at these sizes
        g_c, a_c = cent[pos_m], self._anchors_np[pos_key % n]
        v = np.asarray(self.variances)
        t_np = np.empty((pos_key.size, 4), dtype=np.float64)
        t_np[:, :2] = (g_c[:, :2] - a_c[:, :2]) / (a_c[:, 2:] * v[:2])
        t_np[:, 2:] = np.log(g_c[:, 2:] / a_c[:, 2:]) / v[2:]
        targets_np[pos_key] = t_np
        labels_out = _on(labels_np.reshape(bsz, n), dev)
        targets = _on(targets_np.reshape(bsz, n, 4), dev)
        if want_matches:
            owner = np.full(bsz * n, -1, dtype=np.int64)
            owner[pos_key] = gidx[pos_m]
            return labels_out, targets, _on(owner.reshape(bsz, n), dev)
        return labels_out, targets, None

    # ------------------------------------------------------------------ internals
    def _candidate_pairs(
        self, cent: np.ndarray, gf: np.ndarray, subset: np.ndarray, t_sub: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pairs (gt in ``subset``, anchor) that may have ``IoU >= t_sub[gt]`` (numpy, CPU).

        Args:
            cent: ``[M_all, 4]`` float64 gt centroids; gf: their ``[5, M_all]`` box fields.
            subset: ``[M]`` int64 gt indices; t_sub: ``[M]`` float64 threshold of each.

        Returns ``(gt index, anchor index, exact IoU, that gt's threshold)`` per pair.
        """
        g = self._groups
        t_all = np.maximum(t_sub, 0) * (1 - 1e-9)  # [M], a hair lower: the windows stay supersets
        c = cent[subset]
        # Screen every (group, gt) combination on [Q, M] first: a group can reach IoU t only if its
        # largest overlap can, which few groups pass for a given box; the window geometry then runs
        # on the survivors only.
        min_w_qm, min_h_qm = np.minimum(g.max_wh[:, :1], c[:, 2]), np.minimum(g.max_wh[:, 1:], c[:, 3])
        inter_qm = min_w_qm * min_h_qm
        sum_qm = g.min_area[:, None] + c[:, 2] * c[:, 3]
        if self._dense:
            qi, mi = np.nonzero(np.ones(inter_qm.shape, dtype=bool))
        else:
            qi, mi = np.nonzero(inter_qm / (sum_qm - inter_qm) >= t_all)
        # one entry per surviving (group, gt) window
        gx, gy, gw, gh = c[mi, 0], c[mi, 1], c[mi, 2], c[mi, 3]
        mw, mh = g.max_wh[qi, 0], g.max_wh[qi, 1]
        min_w, min_h = min_w_qm[qi, mi], min_h_qm[qi, mi]
        t = t_all[mi]
        # IoU >= t needs inter >= t * (A + G) / (1 + t); with the other side at most min_wh, each
        # side's overlap bounds how far the centres may be apart.
        i_min = t * sum_qm[qi, mi] / (1 + t)
        dx_max = (mw + gw) / 2 - i_min / min_h
        dy_max = (mh + gh) / 2 - i_min / min_w
        ox, oy, stx, sty = g.origin[qi, 0], g.origin[qi, 1], g.step[qi, 0], g.step[qi, 1]
        lastx, lasty = g.last[qi, 0], g.last[qi, 1]
        lox = np.maximum(np.ceil((gx - dx_max - ox) / stx - 1e-6), 0)
        loy = np.maximum(np.ceil((gy - dy_max - oy) / sty - 1e-6), 0)
        hix = np.minimum(np.floor((gx + dx_max - ox) / stx + 1e-6), lastx)
        hiy = np.minimum(np.floor((gy + dy_max - oy) / sty + 1e-6), lasty)
        if self._dense:
            ok = np.ones(qi.size, dtype=bool)
        else:
            ok = (dx_max >= 0) & (dy_max >= 0)
        if g.any_dense:
            dn = g.dense[qi]
            lox, loy = np.where(dn, 0.0, lox), np.where(dn, 0.0, loy)
            hix, hiy = np.where(dn, lastx, hix), np.where(dn, lasty, hiy)
        # rows and columns of each window; a skipped window has no rows
        n_rows = np.where(ok, np.maximum(hiy - loy + 1, 0), 0).astype(np.int64)
        n_cols = np.maximum(hix - lox + 1, 0).astype(np.int64)
        # expand windows to row segments, then row segments to cells (no division per pair)
        ncols = g.ncols[qi]
        win_base = g.offset[qi] + loy.astype(np.int64) * ncols + lox.astype(np.int64)
        n_seg = int(n_rows.sum())
        seg_row = np.arange(n_seg, dtype=np.int64) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
        seg_start = np.repeat(win_base, n_rows) + seg_row * np.repeat(ncols, n_rows)
        seg_len = np.repeat(n_cols, n_rows)
        seg_m = np.repeat(mi, n_rows)
        total = int(seg_len.sum())
        if total == 0:
            empty_i = np.zeros(0, dtype=np.int64)
            empty_f = np.zeros(0, dtype=np.float64)
            return empty_i, empty_i, empty_f, empty_f
        pos = np.arange(total, dtype=np.int64) + np.repeat(seg_start - (np.cumsum(seg_len) - seg_len), seg_len)
        a = g.table[pos]
        m_local = np.repeat(seg_m, seg_len)
        m = subset[m_local]
        return m, a, self._pair_iou(gf, m, a), t_sub[m_local]

    def best_iou_per_group(self, cent: Tensor, gcorn: Tensor, garea: Tensor) -> tuple[Tensor, Tensor]:
        """Exact best IoU of each box with each anchor-size group, and the anchor reaching it.

        Args:
            cent, gcorn, garea: boxes ``[M, 4]`` centroids and corners, ``[M]`` areas, in the anchors'
                coordinate system.

        Returns:
            ``(iou float64 [M, Q], anchor index int64 [M, Q])`` on the anchors' device. For a grid
            group IoU falls off monotonically with the centre distance along each axis, so the
            nearest cell is the best; other groups (clipped anchors) are searched member by member.
        """
        gf = np.concatenate((_np(gcorn).astype(np.float64).T, _np(garea).astype(np.float64)[None]), 0)
        v, a = self._best_per_group(_np(cent).astype(np.float64), gf)
        return _on(v, self.device), _on(a, self.device)

    def _best_per_group(self, cent: np.ndarray, gf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = self._groups
        cell = np.minimum(np.maximum(np.round((cent[:, None, :2] - g.origin) / g.step), 0), g.last)
        cell = cell.astype(np.int64)  # [M, Q, 2]
        a = g.table[g.offset + cell[..., 1] * g.ncols + cell[..., 0]]  # [M, Q]
        rows = np.broadcast_to(np.arange(cent.shape[0])[:, None], a.shape)
        v = self._pair_iou(gf, rows, a)
        if g.any_dense:
            for q in np.flatnonzero(g.dense).tolist():
                members = g.table[g.offset[q] : g.offset[q] + g.ncols[q]]
                iou = self._pair_iou(
                    gf, np.broadcast_to(rows[:, :1], (rows.shape[0], members.size)),
                    np.broadcast_to(members, (rows.shape[0], members.size)),
                )  # [M, K]
                arg = iou.argmax(axis=1)
                v[:, q], a[:, q] = iou[np.arange(iou.shape[0]), arg], members[arg]
        return v, a

    def _best_iou_estimate(self, cent: np.ndarray, gf: np.ndarray, subset: np.ndarray) -> np.ndarray:
        """For gts ``subset``, the best IoU over all anchors (steers the next greedy level only)."""
        v, _ = self._best_per_group(cent[subset], gf[:, subset])
        return v.max(axis=1)

    def _pair_iou(self, gf: np.ndarray, m: np.ndarray, a: np.ndarray) -> np.ndarray:
        """IoU of gts ``m`` (fields ``gf [5, M]``) with anchors ``a``, same-shape index arrays; reference formula."""
        af = self._anchor_fields
        iw = np.minimum(gf[2].take(m), af[2].take(a))
        iw -= np.maximum(gf[0].take(m), af[0].take(a))
        np.maximum(iw, 0, out=iw)
        ih = np.minimum(gf[3].take(m), af[3].take(a))
        ih -= np.maximum(gf[1].take(m), af[1].take(a))
        np.maximum(ih, 0, out=ih)
        iw *= ih  # the intersection
        union = gf[4].take(m)
        union += af[4].take(a)
        union -= iw
        return iw / union

    @staticmethod
    def _compact(keys: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        """Ids in ``[0, len(keys))`` that are equal exactly where ``keys`` are equal (no sort).

        ``scratch`` is any int64 buffer indexable by ``keys``; its contents are overwritten.
        """
        scratch[keys] = np.arange(keys.size, dtype=np.int64)
        return scratch[keys]

    @classmethod
    def _greedy_first(
        cls, pm: np.ndarray, akey: np.ndarray, pv: np.ndarray, gidx: np.ndarray, gt_match: np.ndarray,
        used: np.ndarray, n: int, scratch: np.ndarray,
    ) -> None:
        """:meth:`_greedy_sparse` on all pairs, with its first round done on the few pairs that matter.

        A first-round match is a pair that is best for its gt and for its anchor, so the anchor side
        is only needed on the anchors some gt ranks first; the later rounds run on the pairs left
        alive (gt unmatched, anchor free), which are few.
        """
        if pv.size == 0:
            return
        n_gt = gt_match.size
        gv, ga = _group_argmax(pm, n_gt, pv, akey)
        cg = np.flatnonzero(ga != _BIG)  # gts with pairs, and their first-choice anchor
        ck = ga[cg]
        mark = np.zeros(used.size, dtype=bool)
        mark[ck] = True
        on = np.flatnonzero(mark[akey])  # pairs on first-choice anchors
        sk, sv, sg = akey[on], pv[on], gidx[pm[on]]
        sid = cls._compact(sk, scratch)
        av, ag = _group_argmax(sid, sk.size, sv, sg)
        cid = scratch[ck]  # the compact id of each first-choice anchor
        dom = np.flatnonzero((av[cid] == gv[cg]) & (ag[cid] == gidx[cg]))
        dm, da = cg[dom], ck[dom]
        gt_match[dm] = da % n
        used[da] = True
        alive = np.flatnonzero((gt_match[pm] < 0) & ~used[akey])
        if alive.size:
            am = pm[alive]
            cls._greedy_sparse(am, akey[alive], pv[alive], gidx[am], gt_match, used, n, scratch)

    @classmethod
    def _greedy_sparse(
        cls, pm: np.ndarray, akey: np.ndarray, pv: np.ndarray, pg: np.ndarray, gt_match: np.ndarray,
        used: np.ndarray, n: int, scratch: np.ndarray,
    ) -> None:
        """Sequential greedy matching on sparse pairs, by rounds of locally dominant pairs.

        ``pm`` global gt index, ``akey`` = image * n + anchor, ``pv`` IoU, ``pg`` per-image gt index.
        The order is IoU descending, then gt index, then anchor index (the reference's row-major
        argmax). Restricted to one gt it is (IoU desc, anchor asc); to one anchor (IoU desc, gt asc):
        both are found with scatter-reduce, no sort. A pair best for both its gt and its anchor is
        matched by the sequential greedy too, so each round commits all of them at once.
        Writes the anchor of each matched gt into ``gt_match`` and marks it in ``used`` (``[B*n]``).
        """
        if pv.size == 0:
            return
        n_gt = gt_match.size
        aid = cls._compact(akey, scratch)
        k = pv.size
        while pv.size:
            gv, ga = _group_argmax(pm, n_gt, pv, akey)
            av, ag = _group_argmax(aid, k, pv, pg)
            dom = np.flatnonzero((pv == gv[pm]) & (pv == av[aid]) & (ga[pm] == akey) & (ag[aid] == pg))
            dm, da = pm[dom], akey[dom]
            gt_match[dm] = da % n
            used[da] = True
            done_g = np.zeros(n_gt, dtype=bool)
            done_g[dm] = True
            done_a = np.zeros(k, dtype=bool)
            done_a[aid[dom]] = True
            alive = np.flatnonzero(~(done_g[pm] | done_a[aid]))
            pm, akey, pv, pg, aid = pm[alive], akey[alive], pv[alive], pg[alive], aid[alive]

    def _greedy_dense(
        self,
        left: np.ndarray,
        img: np.ndarray,
        gidx: np.ndarray,
        gf: np.ndarray,
        gt_match: np.ndarray,
        used_anchor: np.ndarray,
    ) -> None:
        """Finish the greedy matching for ground truth ``left`` on dense IoU rows (all below ``t``)."""
        n = self.num_anchors
        shape = (left.size, n)
        rows = self._pair_iou(gf, np.broadcast_to(left[:, None], shape), np.broadcast_to(np.arange(n), shape))
        lb = img[left]
        lg = gidx[left]
        rows[used_anchor[lb]] = -1.0
        active = np.ones(left.size, dtype=bool)
        bsz = used_anchor.shape[0]
        ar = np.arange(left.size)
        while active.any():
            arg = rows.argmax(axis=1)  # first maximum
            val = np.where(active, rows[ar, arg], -2.0)
            best = np.full(bsz, -2.0)
            np.maximum.at(best, lb, val)
            cand = active & (val == best[lb])
            first_g = np.full(bsz, _BIG, dtype=np.int64)
            np.minimum.at(first_g, lb[cand], lg[cand])
            ci = np.flatnonzero(cand & (lg == first_g[lb]))  # at most one row per image
            gt_match[left[ci]] = arg[ci]
            active[ci] = False
            # the chosen anchors are gone for every row of the same image
            chosen_anchor = np.full(bsz, -1, dtype=np.int64)
            chosen_anchor[lb[ci]] = arg[ci]
            ca = chosen_anchor[lb]
            has = ca >= 0
            rows[ar[has], ca[has]] = -1.0
            used_anchor[lb[ci], arg[ci]] = True

    def config(self) -> dict[str, Any]:
        """Constructor arguments other than the anchors (for checkpoints and configs)."""
        return {
            "image_size": list(self.image_size),
            "n_classes": self.n_classes,
            "matching": self.matching,
            "pos_iou_threshold": self.pos_iou_threshold,
            "neg_iou_limit": self.neg_iou_limit,
            "variances": list(self.variances),
            "degenerate": self.degenerate,
            "normalize_coords": self.normalize_coords,
            "algorithm": self.algorithm,
        }
