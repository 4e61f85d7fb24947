"""Loading weights into a model that may differ from the one that produced them.

:func:`load_weights` copies every tensor whose name and shape match, keeps the model's own
initialisation for the rest, and reports what happened -- the fine-tuning case where a checkpoint
trained on 20 classes is loaded into a 3-class model: the backbone, extras and box heads load,
the class heads are reset (or use :func:`ssdkit.models.resample_classes` to keep some of them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["LoadReport", "load_weights"]

log = logging.getLogger("ssdkit.models")


@dataclass
class LoadReport:
    """What a weight load did.

    Attributes:
        loaded: names (state-dict keys or layer names) copied into the model.
        reset: ``(name, source shape, model shape)`` present in both with different shapes; the
            model keeps its initialisation for them (e.g. class heads after a class-count change).
        missing: model entries absent from the source (left as initialised).
        unexpected: source entries the model has no place for (ignored).
    """

    loaded: list[str] = field(default_factory=list)
    reset: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Everything matched: nothing reset, missing or unexpected."""
        return not (self.reset or self.missing or self.unexpected)

    def reset_modules(self) -> list[str]:
        """Module names (``heads.cls.0``...) whose tensors were reset, in order, without duplicates."""
        out: list[str] = []
        for name, _, _ in self.reset:
            mod = name.rsplit(".", 1)[0]
            if mod not in out:
                out.append(mod)
        return out

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)}"]
        if self.reset:
            parts.append(f"reset (shape mismatch) {len(self.reset)}: {', '.join(self.reset_modules())}")
        if self.missing:
            parts.append(f"missing {len(self.missing)}: {_abbrev(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)}: {_abbrev(self.unexpected)}")
        return "; ".join(parts)


def _abbrev(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... (+{len(names) - n})" if len(names) > n else "")


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    strict: bool = False,
    verbose: bool = True,
) -> LoadReport:
    """Copy matching tensors of ``state_dict`` into ``model``.

    Args:
        model: any module (usually an :class:`~ssdkit.models.SSD`).
        state_dict: ``{name: tensor}`` (e.g. ``ssdkit.checkpoint.load_checkpoint(p)['state_dict']``).
        strict: raise ``ValueError`` unless every entry matches in name and shape.
        verbose: log the summary at WARNING level when something was reset, missing or unexpected
            (INFO otherwise) on the ``ssdkit.models`` logger.

    Returns:
        a :class:`LoadReport`; ``report.reset_modules()`` names the heads that kept their init.
    """
    own = model.state_dict()
    report = LoadReport()
    to_load: dict[str, Tensor] = {}
    for name, value in state_dict.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(own[name].shape) != tuple(value.shape):
            report.reset.append((name, tuple(value.shape), tuple(own[name].shape)))
        else:
            to_load[name] = value
            report.loaded.append(name)
    report.missing = [k for k in own if k not in state_dict]
    if strict and not report.ok:
        raise ValueError(f"state dict does not match the model: {report.summary()}")
    with torch.no_grad():
        for name, value in to_load.items():
            own[name].copy_(value)
    if verbose:
        log.log(logging.INFO if report.ok else logging.WARNING, "load_weights: %s", report.summary())
    return report
