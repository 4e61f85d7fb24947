"""Datasets (VOC / CSV / COCO / YOLO), validation, image reading, caches, transforms, loader, conversion.

Item contract (``docs/architecture.md``): ``dataset[i] -> (image uint8 Tensor[3, H, W] RGB, target)``
with ``boxes`` float32 ``[G, 4]`` xyxy pixels, ``labels`` int64 ``[G]`` in ``1..n``, ``difficult`` bool
``[G]``, ``image_id`` str, ``orig_size`` ``(H, W)``, ``inverse`` float32 ``[4]``. See ``docs/data.md``.

Nothing happens at import (OpenCV, h5py and fsspec load on first use).
"""

from __future__ import annotations

from .base import ConcatDetectionDataset, DetectionDataset, Policy, Problem, ValidationReport
from .chains import (
    build_augmentation,
    constant_size_augmentation,
    eval_preprocessing,
    ssd_augmentation,
    variable_size_augmentation,
)
from .coco import COCODataset
from .config import build_dataset, open_datasets, validate_data_config
from .convert import convert_dataset
from .csv_dataset import KERAS_INPUT_FORMAT, CSVDataset
from .io import decode_image, read_image
from .loader import DetectionLoader, build_loader, collate_detection
from .transforms import Transform, invert_boxes
from .voc import VOCDataset
from .yolo import YOLODataset

__all__ = [
    "DetectionDataset", "ConcatDetectionDataset", "VOCDataset", "CSVDataset", "COCODataset", "YOLODataset",
    "Policy", "Problem", "ValidationReport", "KERAS_INPUT_FORMAT",
    "build_dataset", "open_datasets", "validate_data_config",
    "build_loader", "DetectionLoader", "collate_detection",
    "ssd_augmentation", "constant_size_augmentation", "variable_size_augmentation", "eval_preprocessing",
    "build_augmentation", "Transform", "invert_boxes",
    "convert_dataset", "read_image", "decode_image",
]
