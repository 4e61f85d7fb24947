"""``build_loader``: batches of images and (optionally) encoded SSD targets.

Each batch is a dict (``docs/architecture.md``)::

    images       uint8 [B, 3, H, W]
    labels       int64 [B, N]      0 background, -1 neutral, k class   (with an encoder)
    box_targets  float32 [B, N, 4] centroid offsets                      (with an encoder)
    targets      list of B target dicts (boxes float32 [G, 4] in network pixels, labels, difficult,
                 image_id, orig_size, inverse)
    inverse      float32 [B, 4]    (sx, sy, ox, oy): orig = (net - o) / s
    orig_size    int64 [B, 2]      (H, W) of the files
    image_ids    list of B str

Randomness: sample ``i`` of epoch ``e`` is augmented with ``numpy.random.default_rng([seed, e, i])``
and shuffling uses ``torch.Generator().manual_seed(seed + e)``, so a run is reproducible and
independent of the number of workers. The epoch advances at each ``iter(loader)`` (or set it with
``loader.set_epoch(e)``; a ``DistributedSampler`` gets ``set_epoch`` too).

Where targets are encoded (``encode_in``): ``'worker'`` runs the batched encoder in ``collate`` inside
the DataLoader workers (one batched call per batch); ``'main'`` encodes the collated batch in the
main process (on the encoder's device: the choice for a CUDA encoder). ``'auto'`` (default) picks
``'main'`` for an encoder on a GPU or with ``workers=0`` and ``'worker'`` otherwise - on CPU the
batched encoder costs ~0.4 ms per image at batch 32 (SSD300 anchors), which the workers absorb while
the main process trains; per-sample encoding is ~7x slower per image. Measurements: ``bench/data.py``
and docs/data.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from ..errors import DataError
from .base import DetectionDataset, to_tensors
from .transforms import apply_transform

__all__ = ["build_loader", "DetectionLoader", "Collate", "collate_detection"]


class _Augmented(Dataset):
    """``dataset.load(i)`` + ``transforms`` with a per-sample generator derived from (seed, epoch, i)."""

    def __init__(self, dataset: DetectionDataset, transforms: Callable[..., Any] | None, seed: int,
                 epoch: torch.Tensor) -> None:
        self.dataset = dataset
        self.transforms = transforms
        self.seed = int(seed)
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self.dataset.load(index)
        if self.transforms is not None:
            rng = np.random.default_rng([self.seed, int(self.epoch), int(index)])
            image, target = apply_transform(self.transforms, image, target, rng)
        return to_tensors(image, target)


def collate_detection(samples: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> dict[str, Any]:
    """Stack images and gather targets into the batch dict (without encoded targets)."""
    images = [s[0] for s in samples]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        ids = [s[1].get("image_id") for s in samples]
        raise DataError(
            f"images in a batch have different sizes {sorted(shapes)} (ids {ids[:4]}...); add a Resize to the "
            "transforms (e.g. ssdkit.data.eval_preprocessing(size)) or use batch_size=1"
        )
    targets = [s[1] for s in samples]
    return {
        "images": torch.stack(images).contiguous(),
        "targets": targets,
        "inverse": torch.stack([torch.as_tensor(t["inverse"], dtype=torch.float32) for t in targets]),
        "orig_size": torch.tensor([list(t["orig_size"]) for t in targets], dtype=torch.int64).reshape(-1, 2),
        "image_ids": [str(t["image_id"]) for t in targets],
    }


class Collate:
    """Picklable collate function: :func:`collate_detection` plus, optionally, batched target encoding."""

    def __init__(self, encoder: Any = None) -> None:
        self.encoder = encoder

    def __call__(self, samples: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> dict[str, Any]:
        batch = collate_detection(samples)
        if self.encoder is not None:
            encode_batch(batch, self.encoder)
        return batch


def encode_batch(batch: dict[str, Any], encoder: Any) -> dict[str, Any]:
    """Add ``labels [B, N]`` and ``box_targets [B, N, 4]`` to ``batch`` (on the encoder's device)."""
    boxes = [t["boxes"] for t in batch["targets"]]
    labels = [t["labels"] for t in batch["targets"]]
    h, w = batch["images"].shape[-2:]
    if tuple(encoder.image_size) != (h, w):
        raise DataError(
            f"the encoder expects {encoder.image_size[0]}x{encoder.image_size[1]} inputs but the batch images are "
            f"{h}x{w}; resize to the model's image_size in the transforms"
        )
    batch["labels"], batch["box_targets"] = encoder(boxes, labels)
    return batch


def _worker_init(worker_id: int) -> None:
    """One thread per worker (no oversubscription on small machines) and distinct global seeds."""
    torch.set_num_threads(1)
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    import random

    random.seed(seed)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - opencv is a dependency
        pass


class DetectionLoader:
    """Iterable over batch dicts (see the module docstring); wraps a ``torch.utils.data.DataLoader``."""

    def __init__(self, dataset: DetectionDataset, batch_size: int, shuffle: bool, workers: int,
                 transforms: Callable[..., Any] | None, encoder: Any, drop_last: bool, seed: int,
                 sampler: Sampler[int] | None, encode_in: str, pin_memory: bool,
                 persistent_workers: bool | None, prefetch_factor: int | None,
                 multiprocessing_context: str | None = None) -> None:
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.encoder = encoder
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._augmented = _Augmented(dataset, transforms, seed, self._epoch)
        if encode_in == "auto":
            on_gpu = encoder is not None and getattr(encoder, "device", torch.device("cpu")).type != "cpu"
            encode_in = "main" if (on_gpu or workers == 0) else "worker"
        self.encode_in = encode_in
        self._user_sampler = sampler
        self._shuffle = shuffle
        self._generator = torch.Generator()
        if sampler is None:
            sampler = (RandomSampler(self._augmented, generator=self._generator) if shuffle
                       else SequentialSampler(self._augmented))
        self.sampler = sampler
        kw: dict[str, Any] = {}
        if workers > 0:
            kw["persistent_workers"] = True if persistent_workers is None else persistent_workers
            kw["worker_init_fn"] = _worker_init
            if prefetch_factor is not None:
                kw["prefetch_factor"] = prefetch_factor
            if multiprocessing_context is not None:
                kw["multiprocessing_context"] = multiprocessing_context
        self.loader = DataLoader(
            self._augmented, batch_size=self.batch_size, sampler=sampler, num_workers=workers,
            collate_fn=Collate(encoder if encode_in == "worker" else None), drop_last=drop_last,
            pin_memory=pin_memory, **kw,
        )
        self._started = False

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used by the next ``iter()`` (otherwise it advances by one per ``iter()``)."""
        self._epoch.fill_(int(epoch))
        self._started = False

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._started:
            self._epoch += 1
        self._started = True
        e = int(self._epoch)
        self._generator.manual_seed(self.seed + e)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(e)  # type: ignore[union-attr]
        for batch in self.loader:
            if self.encode_in == "main" and self.encoder is not None:
                encode_batch(batch, self.encoder)
            yield batch


def build_loader(
    dataset: DetectionDataset,
    batch_size: int,
    shuffle: bool = False,
    workers: int = 0,
    transforms: Callable[..., Any] | None = None,
    encoder: Any = None,
    drop_last: bool = False,
    seed: int = 0,
    sampler: Sampler[int] | None = None,
    encode_in: str = "auto",
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
    multiprocessing_context: str | None = None,
) -> DetectionLoader:
    """Batches of ``dataset`` (see the module docstring for the batch dict and the randomness).

    Args:
        dataset: an ssdkit dataset (its own ``transforms`` are used when ``transforms`` is ``None``).
        batch_size: images per batch.
        shuffle: reshuffle each epoch (reproducibly from ``seed``); must be ``False`` with a ``sampler``.
        workers: DataLoader worker processes (0 = load in the main process).
        transforms: ssdkit transform (or torchvision v2 pipeline) applied per sample; it must produce
            one size per batch (e.g. end with a Resize).
        encoder: an :class:`~ssdkit.matching.SSDTargetEncoder` to add ``labels``/``box_targets``.
        drop_last: drop the last incomplete batch.
        seed: base seed of shuffling and augmentation.
        sampler: e.g. a ``DistributedSampler`` (its ``set_epoch`` is called every epoch).
        encode_in: ``'auto'``, ``'worker'`` or ``'main'``.
        pin_memory, persistent_workers, prefetch_factor, multiprocessing_context: passed to the DataLoader
            (workers persist by default; ``'spawn'``/``'forkserver'`` work: everything pickles).
    """
    if not isinstance(dataset, DetectionDataset):
        raise TypeError(f"build_loader needs an ssdkit dataset, got {type(dataset).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if sampler is not None and shuffle:
        raise ValueError("give either shuffle=True or a sampler (which shuffles itself), not both")
    if encode_in not in ("auto", "worker", "main"):
        raise ValueError(f"encode_in must be 'auto', 'worker' or 'main', got {encode_in!r}")
    if encoder is not None and encoder.n_classes < len(dataset.classes):
        raise DataError(f"the encoder has {encoder.n_classes} classes but the dataset has {len(dataset.classes)}")
    if transforms is None:
        transforms = dataset.transforms
    if workers > (os.cpu_count() or 1) * 4:
        raise ValueError(f"workers={workers} is far above the {os.cpu_count()} CPUs")
    return DetectionLoader(dataset, batch_size, shuffle, workers, transforms, encoder, drop_last, seed, sampler,
                           encode_in, pin_memory, persistent_workers, prefetch_factor, multiprocessing_context)
