"""Learning-rate schedules as pure functions of ``(epoch, iteration)``, plus reduce-on-plateau.

The learning rate of every parameter group is ``base_lr * factor(epoch, iteration) * warmup``,
floored at ``min_lr``, recomputed before every iteration. Because it depends only on the
position in training (and, for ``plateau``, on a small stored state), a resumed run gets exactly
the learning rates of the uninterrupted run, mid-epoch included.

Schedules (``schedule.name``):

- ``constant``: factor 1.
- ``step``: ``gamma ** (t // step_size)``.
- ``multistep``: ``gamma ** (number of milestones <= t)``. With ``by: epoch`` a milestone ``m``
  takes effect at the start of the ``m``-th epoch counted from 0, i.e. after ``m`` epochs: the
  deepfake recipe ``milestones: [8, 12]`` trains epochs 1-8 at ``lr``, 9-12 at ``lr * gamma``,
  13-15 at ``lr * gamma**2`` (the Keras ``LearningRateScheduler`` with 0-based epochs).
- ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2`` with ``T`` the total epochs
  (``by: epoch``) or iterations (``by: iter``).
- ``plateau``: factor ``gamma ** k`` where ``k`` is the number of reductions so far; a reduction
  happens when ``monitor`` has not improved for ``patience`` consecutive evaluated epochs (Keras
  ``ReduceLROnPlateau``). ``map`` is maximised, losses are minimised.

``t`` is the 0-based epoch index (``by: epoch``) or the global iteration (``by: iter``). A linear
warm-up multiplies the first ``warmup_iters`` iterations by ``warmup_factor -> 1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["LRSchedule", "build_schedule"]


class LRSchedule:
    """Sets the learning rates of ``optimizer`` from the position in training.

    Args:
        optimizer: its param groups' current ``lr`` are the base learning rates.
        name, by, milestones, step_size, gamma, min_lr, warmup_iters, warmup_factor, patience,
            monitor: the ``schedule:`` config keys (see the module docstring).
        epochs: total epochs of the run (cosine length).
        iters_per_epoch: iterations per epoch (cosine length with ``by: iter``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str = "constant",
        by: str = "epoch",
        milestones: list[int] | tuple[int, ...] = (),
        step_size: int = 10,
        gamma: float = 0.1,
        min_lr: float = 0.0,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
        patience: int = 3,
        monitor: str = "val_loss",
        epochs: int = 1,
        iters_per_epoch: int = 1,
    ) -> None:
        if name not in ("constant", "step", "multistep", "cosine", "plateau"):
            raise ValueError(f"schedule.name: unknown schedule {name!r}")
        if by not in ("epoch", "iter"):
            raise ValueError(f"schedule.by: must be 'epoch' or 'iter', got {by!r}")
        self.optimizer = optimizer
        self.name = name
        self.by = by
        self.milestones = sorted(int(m) for m in milestones)
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        self.min_lr = float(min_lr)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.patience = int(patience)
        self.monitor = monitor
        self.epochs = max(1, int(epochs))
        self.iters_per_epoch = max(1, int(iters_per_epoch))
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        # reduce-on-plateau state
        self.reductions = 0
        self.best: float | None = None
        self.bad_epochs = 0

    # ------------------------------------------------------------------ the schedule
    def factor(self, epoch: int, iteration: int) -> float:
        """Schedule factor (without warm-up) at 0-based ``epoch`` and global ``iteration``."""
        t = epoch if self.by == "epoch" else iteration
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            return self.gamma ** (t // self.step_size)
        if self.name == "multistep":
            return self.gamma ** sum(1 for m in self.milestones if m <= t)
        if self.name == "plateau":
            return self.gamma ** self.reductions
        total = self.epochs if self.by == "epoch" else self.epochs * self.iters_per_epoch
        return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))  # cosine, applied between min_lr and lr

    def warmup(self, iteration: int) -> float:
        """Linear warm-up multiplier at global ``iteration`` (1 after ``warmup_iters``)."""
        if iteration >= self.warmup_iters:
            return 1.0
        alpha = iteration / self.warmup_iters
        return self.warmup_factor * (1.0 - alpha) + alpha

    def lrs_at(self, epoch: int, iteration: int) -> list[float]:
        """Learning rate of each param group at ``(epoch, iteration)``."""
        f = self.factor(epoch, iteration)
        w = self.warmup(iteration)
        out = []
        for base in self.base_lrs:
            if self.name == "cosine":
                lr = self.min_lr + (base - self.min_lr) * f if base > self.min_lr else base
            else:
                lr = max(base * f, min(self.min_lr, base))
            out.append(lr * w)
        return out

    def step(self, epoch: int, iteration: int) -> float:
        """Set every group's ``lr`` for the iteration about to run; returns group 0's."""
        lrs = self.lrs_at(epoch, iteration)
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        return lrs[0]

    def epoch_end(self, metrics: Mapping[str, Any]) -> bool:
        """Update reduce-on-plateau from an epoch's metrics; returns whether the lr was reduced."""
        if self.name != "plateau":
            return False
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return False  # not evaluated this epoch
        value = float(value)
        better = self.best is None or (value > self.best if self.monitor == "map" else value < self.best)
        if better:
            self.best = value
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.reductions += 1
            self.bad_epochs = 0
            return True
        return False

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"reductions": self.reductions, "best": self.best, "bad_epochs": self.bad_epochs,
                "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reductions = int(state.get("reductions", 0))
        self.best = state.get("best")
        self.bad_epochs = int(state.get("bad_epochs", 0))


def build_schedule(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], epochs: int,
                   iters_per_epoch: int) -> LRSchedule:
    """An :class:`LRSchedule` from a validated ``schedule:`` config section."""
    return LRSchedule(
        optimizer,
        name=cfg["name"],
        by=cfg["by"],
        milestones=cfg["milestones"],
        step_size=cfg["step_size"],
        gamma=cfg["gamma"],
        min_lr=cfg["min_lr"],
        warmup_iters=cfg["warmup_iters"],
        warmup_factor=cfg["warmup_factor"],
        patience=cfg["patience"],
        monitor=cfg["monitor"],
        epochs=epochs,
        iters_per_epoch=iters_per_epoch,
    )
