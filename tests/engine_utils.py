"""Helpers shared by the engine / CLI tests: a tiny generated VOC dataset and a fast config."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def make_tiny_voc(root: Path, n_images: int = 16, seed: int = 0) -> Path:
    """12 train + 4 val images of 64x64 with coloured shapes (ssdkit.data.synthetic)."""
    from ssdkit.data.synthetic import make_synthetic_voc

    if not (root / "ImageSets" / "Main" / "train.txt").is_file():
        make_synthetic_voc(str(root), n_images=n_images, size=(64, 64), seed=seed, max_objects=3)
    return root


def tiny_config(data_root: Path, out_dir: Path, name: str = "tiny", **train: Any) -> dict[str, Any]:
    """A config that trains in about a second per epoch on one core."""
    cfg: dict[str, Any] = {
        "name": name,
        "model": {"name": "toy_ssd", "image_size": 64, "width": 4},
        "data": {"format": "voc", "root": str(data_root), "classes": ["red", "green", "blue"],
                 "train": "train", "val": "val", "check_images": "none"},
        "augment": {"chain": "none"},
        "optimizer": {"name": "adam", "lr": 0.003, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": 2, "batch_size": 4, "workers": 0, "out_dir": str(out_dir), "log_every": 1,
                  "progress": False, "tensorboard": True, "seed": 0},
        "eval": {"every": 1, "top_k": 50},
    }
    cfg["train"].update(train)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(copy.deepcopy(cfg), sort_keys=False))
    return path


def run_python(args: list[str], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """``python args...`` in a subprocess with one intra-op thread and the package importable."""
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
              "MPLBACKEND": "Agg"})
    e.update(env or {})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
