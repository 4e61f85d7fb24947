"""Shared test fixtures. Tests never touch the network; ../shared is optional (tests skip without it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))  # for bench.reference_numpy, the independent numpy oracle

# Two xdist workers on two cores: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def bccd_root(shared_dir: Path) -> Path:
    p = shared_dir / "data" / "bccd"
    if not p.is_dir():
        pytest.skip("../shared/data/bccd is not present")
    return p


@pytest.fixture(scope="session")
def raccoon_root(shared_dir: Path) -> Path:
    p = shared_dir / "data" / "raccoon"
    if not p.is_dir():
        pytest.skip("../shared/data/raccoon is not present")
    return p


@pytest.fixture()
def torch_home_with_mnv2(tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TORCH_HOME whose hub cache holds ../shared's MobileNetV2 ImageNet weights (no download)."""
    src = shared_dir / "weights" / "mobilenet_v2-b0353104.pth"
    if not src.is_file():
        pytest.skip("../shared/weights/mobilenet_v2-b0353104.pth is not present")
    ckpt = tmp_path / "torch_home" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / src.name).symlink_to(src)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"
