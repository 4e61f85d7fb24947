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
from .boxes import DEFAULT_VARIANCES, encode

__all__ = ["SSDTargetEncoder", "validate_targets"]

_BIG = torch.iinfo(torch.int64).max


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
    if degenerate not in ("error", "remove"):
        raise ValueError(f"degenerate must be 'error' or 'remove', got {degenerate!r}")
    if len(boxes) != len(labels):
        raise ValueError(f"got boxes for {len(boxes)} images but labels for {len(labels)}")
    bl: list[Tensor] = []
    ll: list[Tensor] = []
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        try:
            b = b if isinstance(b, Tensor) else torch.as_tensor(np.asarray(b, dtype=np.float64))
            lab = lab if isinstance(lab, Tensor) else torch.as_tensor(np.asarray(lab))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"image {i}: boxes/labels are not numeric arrays ({exc})") from None
        if b.numel() == 0 and lab.numel() == 0:
            b, lab = b.reshape(0, 4), lab.reshape(0)
        if b.dim() != 2 or b.shape[-1] != 4:
            raise ValueError(f"image {i}: boxes must have shape (G, 4) xyxy, got {tuple(b.shape)}")
        if lab.dim() != 1 or lab.shape[0] != b.shape[0]:
            raise ValueError(
                f"image {i}: labels must have shape ({b.shape[0]},) to match the boxes, got {tuple(lab.shape)}"
            )
        bl.append(b)
        ll.append(lab)
    counts = torch.tensor([b.shape[0] for b in bl], dtype=torch.int64, device=device)
    if not bl:
        empty = torch.zeros((0, 4), dtype=torch.float64, device=device)
        return empty, torch.zeros(0, dtype=torch.int64, device=device), counts, 0
    # one conversion for the whole batch (cat promotes mixed dtypes)
    gb = torch.cat(bl).to(device=device, dtype=torch.float64)
    lab_raw = torch.cat(ll).to(device=device)
    if lab_raw.dtype == torch.bool:
        lab_raw = lab_raw.long()

    def where(mask: Tensor) -> tuple[int, int]:
        j = int(torch.nonzero(mask)[0])
        img = int(torch.searchsorted(torch.cumsum(counts, 0), j, right=True))
        return img, j - int(counts[:img].sum())

    if lab_raw.is_floating_point():
        bad = ~torch.isfinite(lab_raw) | (lab_raw != lab_raw.round())
        if bool(bad.any()):
            i, j = where(bad)
            raise ValueError(f"image {i}, box {j}: label {ll[i][j].item()} is not an integer class id")
    gl = lab_raw.to(torch.int64)
    finite = torch.isfinite(gb).all(dim=1)
    if not bool(finite.all()):
        i, j = where(~finite)
        raise ValueError(f"image {i}, box {j}: non-finite coordinates {bl[i][j].tolist()}")
    bad_lab = (gl < 1) | (gl > n_classes)
    if bool(bad_lab.any()):
        i, j = where(bad_lab)
        raise ValueError(f"image {i}, box {j}: label {int(ll[i][j])} is out of range 1..{n_classes} (0 is background)")
    degen = (gb[:, 2] - gb[:, 0] <= 0) | (gb[:, 3] - gb[:, 1] <= 0)
    removed = 0
    if bool(degen.any()):
        if degenerate == "error":
            i, j = where(degen)
            raise ValueError(
                f"image {i}, box {j}: degenerate box {bl[i][j].tolist()} (xmax <= xmin or ymax <= ymin); "
                "fix the annotation or use degenerate='remove'"
            )
        removed = int(degen.sum())
        img = torch.repeat_interleave(torch.arange(len(bl), device=device), counts)
        counts = counts - torch.bincount(img[degen], minlength=len(bl))
        gb, gl = gb[~degen], gl[~degen]
    return gb, gl, counts, removed


@dataclass
class _Groups:
    """Anchors grouped by size; each group is a regular grid of centres (or a single dense row).

    Pair fields hold ``(x, y)`` in their last dimension.
    """

    origin: Tensor  # [Q, 2] float64 centre of cell (0, 0)
    step: Tensor  # [Q, 2] cell spacing (1.0 along an axis with one cell)
    last: Tensor  # [Q, 2] float64 index of the last column / row
    ncols: Tensor  # [Q] int64 columns in the table of the group
    max_wh: Tensor  # [Q, 2] float64 largest width / height in the group
    min_area: Tensor  # [Q] float64
    dense: Tensor  # [Q] bool: not a grid, always take every member
    any_dense: bool
    offset: Tensor  # [Q] int64 start of the group's table in `table`
    table: Tensor  # [sum ny*nx] int64 anchor indices, row-major per group


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

    def f64(*keys: str) -> Tensor:
        return torch.tensor([fields[k] for k in keys], dtype=torch.float64).T.contiguous().squeeze(-1)

    dense = torch.tensor(fields["dense"], dtype=torch.bool)
    return _Groups(
        origin=f64("x0", "y0"), step=f64("dx", "dy"),
        last=torch.tensor([fields["nx"], fields["ny"]], dtype=torch.float64).T.contiguous() - 1,
        ncols=torch.tensor(fields["nx"], dtype=torch.int64), max_wh=f64("mw", "mh"), min_area=f64("ma"),
        dense=dense, any_dense=bool(dense.any()), offset=torch.tensor(fields["off"], dtype=torch.int64),
        table=torch.from_numpy(np.concatenate(tables) if tables else np.zeros(0, dtype=np.int64)),
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
        self.num_anchors = a64.shape[0]
        cx, cy, w, h = a64.unbind(-1)
        # Corners exactly as the reference computes them from centroids, so IoU values are bit-identical.
        self._corners = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)
        c = self._corners
        self._area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
        self._corners_area = torch.cat((c, self._area[:, None]), dim=1)
        # The smallest IoU that can change a label; pairs below it only matter for leftover bipartite rows.
        t = min(self.pos_iou_threshold, self.neg_iou_limit) if matching == "multi" else self.neg_iou_limit
        self._t = t
        dense = algorithm == "dense" or t <= 0.0
        self._dense = dense
        g = _build_groups(a64.cpu().numpy(), force_dense=dense)
        self._groups = _Groups(
            **{k: (val.to(self.device) if isinstance(val, Tensor) else val) for k, val in g.__dict__.items()}
        )

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

    def _scratch(self, size: int) -> Tensor:
        # A fresh multi-MB buffer per call costs more in page faults than the whole matching; keep one
        # per thread (DataLoader workers are processes and get their own).
        buf = getattr(self._tls, "buf", None)
        if buf is None or buf.numel() < size:
            buf = torch.empty(size, dtype=torch.int64, device=self.device)
            self._tls.buf = buf
        return buf[:size]

    def _encode(
        self, boxes: Sequence[Any], labels: Sequence[Any], want_matches: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        gb, gl, counts, removed = validate_targets(boxes, labels, self.n_classes, self.degenerate, self.device)
        self.n_removed += removed
        bsz = counts.numel()
        n = self.num_anchors
        dev = self.device
        labels_out = torch.zeros((bsz, n), dtype=torch.int64, device=dev)
        targets = torch.zeros((bsz, n, 4), dtype=torch.float32, device=dev)
        n_gt = gb.shape[0]
        if n_gt == 0:
            matched = torch.full((bsz, n), -1, dtype=torch.int64, device=dev) if want_matches else None
            return labels_out, targets, matched

        img = torch.repeat_interleave(torch.arange(bsz, device=dev), counts)
        gidx = torch.arange(n_gt, device=dev) - (torch.cumsum(counts, 0) - counts)[img]
        if self.normalize_coords:
            h, w = self.image_size
            gb = gb / torch.tensor([w, h, w, h], dtype=torch.float64, device=dev)
        # corners -> centroids -> corners, as the reference does before its IoU
        cent = torch.stack(
            ((gb[:, 0] + gb[:, 2]) / 2, (gb[:, 1] + gb[:, 3]) / 2, gb[:, 2] - gb[:, 0], gb[:, 3] - gb[:, 1]), -1
        )
        gcorn = torch.stack(
            (cent[:, 0] - cent[:, 2] / 2, cent[:, 1] - cent[:, 3] / 2,
             cent[:, 0] + cent[:, 2] / 2, cent[:, 1] + cent[:, 3] / 2), -1
        )
        garea = (gcorn[:, 2] - gcorn[:, 0]) * (gcorn[:, 3] - gcorn[:, 1])

        # ---- greedy bipartite matching on windowed pairs, by decreasing IoU levels
        gt_match = torch.full((n_gt,), -1, dtype=torch.int64, device=dev)  # anchor per gt
        used = torch.zeros(bsz * n, dtype=torch.bool, device=dev)
        scratch = self._scratch(bsz * n)
        everyone = torch.arange(n_gt, device=dev)
        pm, pa, pv, _ = self._candidate_pairs(
            cent, gcorn, garea, everyone, torch.full((n_gt,), self._t, dtype=torch.float64, device=dev)
        )
        if not self._dense:
            keep = pv >= self._t
            pm, pa, pv = pm[keep], pa[keep], pv[keep]  # these also decide multi/neutral below
        key = img.index_select(0, pm) * n + pa
        pg = gidx.index_select(0, pm)
        self._greedy_sparse(pm, key, pv, pg, gt_match, used, n, scratch)
        if not self._dense:
            # Leftover ground truth (small or odd-shaped boxes) continues the greedy below t: first at
            # half of the smallest best-IoU estimate of the image's leftovers, then at any overlap.
            # Each level is exact because every pair of the image at or above its level is present.
            for level in (0, 1):
                left = torch.nonzero(gt_match < 0).flatten()
                if left.numel() == 0:
                    break
                if level == 0:
                    est = self._best_iou_estimate(cent, gcorn, garea, left)
                    t_img = torch.full((bsz,), float("inf"), dtype=torch.float64, device=dev)
                    t_img.scatter_reduce_(0, img.index_select(0, left), est, reduce="amin")
                    t_left = (t_img.index_select(0, img.index_select(0, left)) / 2).clamp(max=self._t)
                else:
                    t_left = torch.zeros(left.numel(), dtype=torch.float64, device=dev)
                qm, qa, qv, qt = self._candidate_pairs(cent, gcorn, garea, left, t_left)
                qkey = img.index_select(0, qm) * n + qa
                ok = torch.nonzero((qv >= qt) & (qv > 0) & ~used.index_select(0, qkey)).flatten()
                qm = qm.index_select(0, ok)
                self._greedy_sparse(
                    qm, qkey.index_select(0, ok), qv.index_select(0, ok), gidx.index_select(0, qm),
                    gt_match, used, n, scratch,
                )
        left = torch.nonzero(gt_match < 0).flatten()
        if left.numel():  # ground truth that overlaps no free anchor at all
            self._greedy_dense(left, img, gidx, gcorn, garea, gt_match, used.view(bsz, n))

        # ---- multi matching and neutral anchors from each anchor's best ground truth (ties: lowest gt)
        aid = self._compact(key, scratch)
        k = key.numel()
        best_v = torch.full((k,), -1.0, dtype=torch.float64, device=dev).scatter_reduce_(0, aid, pv, reduce="amax")
        is_best = torch.nonzero(pv == best_v.index_select(0, aid)).flatten()
        best_m = torch.full((k,), _BIG, dtype=torch.int64, device=dev)
        best_m.scatter_reduce_(0, aid.index_select(0, is_best), pm.index_select(0, is_best), reduce="amin")
        rep = torch.nonzero(aid == torch.arange(k, device=dev)).flatten()  # one pair per anchor
        akey, av, am = key.index_select(0, rep), best_v.index_select(0, rep), best_m.index_select(0, rep)
        bip = img * n + gt_match  # bipartite matches win their anchor over everything else
        is_bip = torch.zeros(bsz * n, dtype=torch.bool, device=dev)
        is_bip[bip] = True
        free = ~is_bip.index_select(0, akey)
        above_neg = av >= self.neg_iou_limit
        if self.matching == "multi":
            above_pos = av >= self.pos_iou_threshold
            sel = torch.nonzero(free & above_pos).flatten()
            pos_key = torch.cat((akey.index_select(0, sel), bip))
            pos_m = torch.cat((am.index_select(0, sel), everyone))
            neutral = akey[free & above_neg & ~above_pos]
        else:
            pos_key, pos_m = bip, everyone
            neutral = akey[free & above_neg]

        lab_flat = labels_out.view(-1)
        lab_flat[neutral] = -1
        lab_flat[pos_key] = gl.index_select(0, pos_m)
        anchors_pos = self.anchors64.index_select(0, pos_key % n)
        targets.view(-1, 4)[pos_key] = encode(cent.index_select(0, pos_m), anchors_pos, self.variances).float()
        if want_matches:
            owner = torch.full((bsz * n,), -1, dtype=torch.int64, device=dev)
            owner[pos_key] = gidx.index_select(0, pos_m)
            return labels_out, targets, owner.view(bsz, n)
        return labels_out, targets, None

    # ------------------------------------------------------------------ internals
    def _candidate_pairs(
        self, cent: Tensor, gcorn: Tensor, garea: Tensor, subset: Tensor, t_sub: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Pairs (gt in ``subset``, anchor) that may have ``IoU >= t_sub[gt]``.

        Returns ``(gt index, anchor index, exact IoU, that gt's threshold)`` per pair.
        """
        g = self._groups
        dev = self.device
        n_q = g.ncols.numel()
        t = (t_sub.clamp(min=0) * (1 - 1e-9))[:, None]  # [M, 1], a hair lower: the windows stay supersets
        c = cent.index_select(0, subset)
        gwh = c[:, None, 2:]  # [M, 1, 2]
        min_wh = torch.minimum(g.max_wh, gwh)  # [M, Q, 2]
        inter_max = min_wh.prod(-1)  # [M, Q]
        sum_area = g.min_area + gwh.prod(-1)  # [M, Q]
        # IoU >= t needs inter >= t * (A + G) / (1 + t); with the other side at most min_wh, each
        # side's overlap bounds how far the centres may be apart.
        i_min = (t * sum_area / (1 + t))[..., None]  # [M, Q, 1]
        d_max = (g.max_wh + gwh) / 2 - i_min / min_wh.flip(-1)  # [M, Q, 2]
        if self._dense:
            ok = torch.ones_like(inter_max, dtype=torch.bool)
        else:
            # no position of this anchor size can reach t: skip the whole group for this gt
            ok = (inter_max / (sum_area - inter_max) >= t) & (d_max >= 0).all(-1)
        gxy = c[:, None, :2]
        lo = torch.ceil((gxy - d_max - g.origin) / g.step - 1e-6).clamp_(min=0)
        hi = torch.minimum(torch.floor((gxy + d_max - g.origin) / g.step + 1e-6), g.last)
        if g.any_dense:
            lo = torch.where(g.dense[:, None], 0.0, lo)
            hi = torch.where(g.dense[:, None], g.last, hi)
        size = (hi - lo + 1).clamp_(min=0)  # [M, Q, 2] columns, rows in the window
        cnt = torch.where(ok, size.prod(-1), 0).to(torch.int64).flatten()  # [M*Q]
        mq = torch.repeat_interleave(cnt)
        if mq.numel() == 0:
            empty_i = torch.zeros(0, dtype=torch.int64, device=dev)
            empty_f = torch.zeros(0, dtype=torch.float64, device=dev)
            return empty_i, empty_i, empty_f, empty_f
        lo = lo.to(torch.int64)
        q_all = torch.arange(n_q, device=dev)
        # per (gt, group): table position of the window's first cell, window width, table width
        base = (g.offset[q_all] + lo[..., 1] * g.ncols + lo[..., 0]).flatten()
        width = size[..., 0].to(torch.int64).flatten()
        stride = g.ncols.expand(cnt.numel() // n_q, n_q).flatten()
        local = torch.arange(mq.numel(), device=dev) - (torch.cumsum(cnt, 0) - cnt).index_select(0, mq)
        w_p = width.index_select(0, mq)
        row = torch.div(local, w_p, rounding_mode="floor")
        pos = base.index_select(0, mq) + row * stride.index_select(0, mq) + (local - row * w_p)
        a = g.table.index_select(0, pos)
        m_local = torch.div(mq, n_q, rounding_mode="floor")
        tp = t_sub.index_select(0, m_local)
        m = subset.index_select(0, m_local)
        v = self._pair_iou(gcorn.index_select(0, m), garea.index_select(0, m), a)
        return m, a, v, tp

    def best_iou_per_group(self, cent: Tensor, gcorn: Tensor, garea: Tensor) -> tuple[Tensor, Tensor]:
        """Exact best IoU of each box with each anchor-size group, and the anchor reaching it.

        Args:
            cent, gcorn, garea: boxes ``[M, 4]`` centroids and corners, ``[M]`` areas, in the anchors'
                coordinate system.

        Returns:
            ``(iou float64 [M, Q], anchor index int64 [M, Q])``. For a grid group IoU falls off
            monotonically with the centre distance along each axis, so the nearest cell is the best;
            other groups (clipped anchors) are searched member by member.
        """
        g = self._groups
        cell = torch.round((cent[:, None, :2] - g.origin) / g.step).clamp_(min=0)
        cell = torch.minimum(cell, g.last).to(torch.int64)  # [M, Q, 2]
        a = g.table[g.offset + cell[..., 1] * g.ncols + cell[..., 0]]  # [M, Q]
        v = self._pair_iou(gcorn[:, None, :], garea[:, None], a)
        if g.any_dense:
            for q in torch.nonzero(g.dense).flatten().tolist():
                members = g.table[int(g.offset[q]) : int(g.offset[q]) + int(g.ncols[q])]
                iou = self._pair_iou(gcorn[:, None, :], garea[:, None], members[None, :])  # [M, K]
                best, arg = iou.max(dim=1)
                v[:, q], a[:, q] = best, members[arg]
        return v, a

    def _best_iou_estimate(self, cent: Tensor, gcorn: Tensor, garea: Tensor, subset: Tensor) -> Tensor:
        """For gts ``subset``, the best IoU over all anchors (steers the next greedy level only)."""
        v, _ = self.best_iou_per_group(
            cent.index_select(0, subset), gcorn.index_select(0, subset), garea.index_select(0, subset)
        )
        return v.amax(dim=1)

    def _pair_iou(self, gc: Tensor, ga: Tensor, a: Tensor) -> Tensor:
        """IoU of gt corners ``gc [..., 4]`` (areas ``ga``) with anchors ``a`` (indices), reference formula."""
        ac = self._corners_area.index_select(0, a.flatten()).view(*a.shape, 5)
        iw = (torch.minimum(gc[..., 2], ac[..., 2]) - torch.maximum(gc[..., 0], ac[..., 0])).clamp_(min=0)
        ih = (torch.minimum(gc[..., 3], ac[..., 3]) - torch.maximum(gc[..., 1], ac[..., 1])).clamp_(min=0)
        inter = iw.mul_(ih)
        return inter / (ga + ac[..., 4] - inter)

    @staticmethod
    def _compact(keys: Tensor, scratch: Tensor) -> Tensor:
        """Ids in ``[0, len(keys))`` that are equal exactly where ``keys`` are equal (no sort).

        ``scratch`` is any int64 buffer indexable by ``keys``; its contents are overwritten.
        """
        scratch[keys] = torch.arange(keys.numel(), device=keys.device)
        return scratch.index_select(0, keys)

    @classmethod
    def _greedy_sparse(
        cls, pm: Tensor, akey: Tensor, pv: Tensor, pg: Tensor, gt_match: Tensor, used: Tensor, n: int,
        scratch: Tensor,
    ) -> None:
        """Sequential greedy matching on sparse pairs, by rounds of locally dominant pairs.

        ``pm`` global gt index, ``akey`` = image * n + anchor, ``pv`` IoU, ``pg`` per-image gt index.
        The order is IoU descending, then gt index, then anchor index (the reference's row-major
        argmax). Restricted to one gt it is (IoU desc, anchor asc); to one anchor (IoU desc, gt asc):
        both are found with scatter-reduce, no sort. A pair best for both its gt and its anchor is
        matched by the sequential greedy too, so each round commits all of them at once.
        Writes the anchor of each matched gt into ``gt_match`` and marks it in ``used`` (``[B*n]``).
        """
        if pv.numel() == 0:
            return
        dev = pv.device
        n_gt = gt_match.numel()
        aid = cls._compact(akey, scratch)
        k = pv.numel()
        while pv.numel():
            gv = torch.full((n_gt,), -1.0, dtype=pv.dtype, device=dev).scatter_reduce_(0, pm, pv, reduce="amax")
            av = torch.full((k,), -1.0, dtype=pv.dtype, device=dev).scatter_reduce_(0, aid, pv, reduce="amax")
            top_g = pv == gv.index_select(0, pm)
            top_a = pv == av.index_select(0, aid)
            ga = torch.full((n_gt,), _BIG, dtype=torch.int64, device=dev)
            ga.scatter_reduce_(0, pm[top_g], akey[top_g], reduce="amin")
            ag = torch.full((k,), _BIG, dtype=torch.int64, device=dev)
            ag.scatter_reduce_(0, aid[top_a], pg[top_a], reduce="amin")
            dom = top_g & top_a & (ga.index_select(0, pm) == akey) & (ag.index_select(0, aid) == pg)
            dm, da = pm[dom], akey[dom]
            gt_match[dm] = da % n
            used[da] = True
            done_g = torch.zeros(n_gt, dtype=torch.bool, device=dev)
            done_g[dm] = True
            done_a = torch.zeros(k, dtype=torch.bool, device=dev)
            done_a[aid[dom]] = True
            alive = ~(done_g.index_select(0, pm) | done_a.index_select(0, aid))
            pm, akey, pv, pg, aid = pm[alive], akey[alive], pv[alive], pg[alive], aid[alive]

    def _greedy_dense(
        self,
        left: Tensor,
        img: Tensor,
        gidx: Tensor,
        gcorn: Tensor,
        garea: Tensor,
        gt_match: Tensor,
        used_anchor: Tensor,
    ) -> None:
        """Finish the greedy matching for ground truth ``left`` on dense IoU rows (all below ``t``)."""
        dev = self.device
        n = self.num_anchors
        rows = self._pair_iou(gcorn[left][:, None, :], garea[left][:, None], torch.arange(n, device=dev)[None, :])
        lb = img[left]
        lg = gidx[left]
        rows = rows.masked_fill(used_anchor[lb], -1.0)
        active = torch.ones(left.numel(), dtype=torch.bool, device=dev)
        bsz = used_anchor.shape[0]
        ar = torch.arange(left.numel(), device=dev)
        while bool(active.any()):
            arg = rows.argmax(dim=1)  # first maximum
            val = rows[ar, arg]
            val = torch.where(active, val, -2.0)
            best = torch.full((bsz,), -2.0, dtype=torch.float64, device=dev)
            best.scatter_reduce_(0, lb, val, reduce="amax")
            cand = active & (val == best[lb])
            first_g = torch.full((bsz,), _BIG, dtype=torch.int64, device=dev)
            first_g.scatter_reduce_(0, lb[cand], lg[cand], reduce="amin")
            chosen = cand & (lg == first_g[lb])  # at most one row per image
            ci = torch.nonzero(chosen).flatten()
            gt_match[left[ci]] = arg[ci]
            active[ci] = False
            # the chosen anchors are gone for every row of the same image
            chosen_anchor = torch.full((bsz,), -1, dtype=torch.int64, device=dev)
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
