"""SSD MultiBox loss: softmax cross-entropy with hard negative mining + smooth-L1 (reference section 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiBoxLoss"]


class MultiBoxLoss(nn.Module):
    """The Keras ``SSDLoss``, reported per the reference formula.

    ``loss = (sum CE(pos) + sum CE(kept neg) + alpha * sum smoothL1(pos)) / max(1, N_pos)``, where the
    kept negatives are the ``k = min(max(neg_pos_ratio * N_pos, n_neg_min), n_nonzero_neg)`` negatives
    with the highest cross-entropy. ``mining='batch'`` (the Keras code) ranks negatives over the whole
    batch; ``mining='per_image'`` (Caffe, torchvision) ranks them per image with that image's
    ``N_pos``, still normalised by the batch's ``N_pos``.

    Neutral anchors (label -1) count neither as positives nor as negatives.
    """

    def __init__(
        self, neg_pos_ratio: float = 3, n_neg_min: int = 0, alpha: float = 1.0, mining: str = "batch"
    ) -> None:
        super().__init__()
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        if n_neg_min < 0:
            raise ValueError(f"n_neg_min must be >= 0, got {n_neg_min}")
        if mining not in ("batch", "per_image"):
            raise ValueError(f"mining must be 'batch' or 'per_image', got {mining!r}")
        self.neg_pos_ratio = neg_pos_ratio
        self.n_neg_min = int(n_neg_min)
        self.alpha = float(alpha)
        self.mining = mining

    def forward(self, cls_logits: Tensor, box_deltas: Tensor, labels: Tensor, box_targets: Tensor) -> dict[str, Tensor]:
        """Compute the loss.

        Args:
            cls_logits: ``[B, N, C+1]`` raw class scores (background at index 0).
            box_deltas: ``[B, N, 4]`` predicted offsets.
            labels: ``[B, N]`` int64: 0 background, -1 neutral, ``1..C`` class (from :class:`SSDTargetEncoder`).
            box_targets: ``[B, N, 4]`` encoded offsets.

        Returns:
            dict of scalar tensors ``loss``, ``cls_loss``, ``box_loss`` (so ``loss = cls_loss + alpha *
            box_loss``), plus ``n_pos`` and ``n_neg`` (float counts, no gradient).
        """
        if cls_logits.dim() != 3:
            raise ValueError(f"cls_logits must be [B, N, C+1], got {tuple(cls_logits.shape)}")
        b, n, c1 = cls_logits.shape
        if box_deltas.shape != (b, n, 4):
            raise ValueError(f"box_deltas must be [{b}, {n}, 4] to match cls_logits, got {tuple(box_deltas.shape)}")
        if labels.shape != (b, n):
            raise ValueError(f"labels must be [{b}, {n}], got {tuple(labels.shape)}")
        if box_targets.shape != (b, n, 4):
            raise ValueError(f"box_targets must be [{b}, {n}, 4], got {tuple(box_targets.shape)}")
        if labels.numel() and (int(labels.max()) >= c1 or int(labels.min()) < -1):
            raise ValueError(
                f"labels must be in -1..{c1 - 1} for {c1} logits, got {int(labels.min())}..{int(labels.max())}"
            )

        logits = cls_logits.float()
        ce = F.cross_entropy(logits.reshape(-1, c1), labels.clamp(min=0).reshape(-1), reduction="none").view(b, n)
        pos = labels > 0
        neg = labels == 0
        n_pos = pos.sum()
        neg_ce = torch.where(neg, ce, torch.zeros_like(ce))

        if self.mining == "batch":
            flat = neg_ce.flatten()
            n_nonzero = int(torch.count_nonzero(flat.detach()))
            k = int(min(max(int(self.neg_pos_ratio * int(n_pos)), self.n_neg_min), n_nonzero))
            neg_sum = flat.topk(k, sorted=False).values.sum() if k > 0 else flat.sum() * 0.0
            n_neg = float(k)
        else:
            n_pos_i = pos.sum(dim=1)
            n_nonzero_i = (neg_ce.detach() != 0).sum(dim=1)
            k_i = torch.minimum(
                torch.clamp((n_pos_i.double() * self.neg_pos_ratio).floor().long(), min=self.n_neg_min), n_nonzero_i
            )
            order = neg_ce.detach().argsort(dim=1, descending=True)
            ranks = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
            keep = ranks < k_i[:, None]
            neg_sum = torch.where(keep, neg_ce, torch.zeros_like(neg_ce)).sum()
            n_neg = float(k_i.sum())

        pos_ce = torch.where(pos, ce, torch.zeros_like(ce)).sum()
        sl1 = F.smooth_l1_loss(box_deltas.float(), box_targets.float(), beta=1.0, reduction="none").sum(-1)
        box_sum = torch.where(pos, sl1, torch.zeros_like(sl1)).sum()
        denom = n_pos.clamp(min=1).float()
        cls_loss = (pos_ce + neg_sum) / denom
        box_loss = box_sum / denom
        return {
            "loss": cls_loss + self.alpha * box_loss,
            "cls_loss": cls_loss,
            "box_loss": box_loss,
            "n_pos": n_pos.detach().float(),
            "n_neg": torch.tensor(n_neg, device=ce.device),
        }
