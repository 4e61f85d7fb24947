"""Loader batches, worker reproducibility, encoding placement, samplers, and the memory / HDF5 caches."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ssdkit.anchors import AnchorGenerator
from ssdkit.data import VOCDataset, build_loader, eval_preprocessing, ssd_augmentation
from ssdkit.data.loader import Collate
from ssdkit.data.synthetic import make_synthetic_voc
from ssdkit.errors import DataError
from ssdkit.matching import SSDTargetEncoder


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_voc(str(root), n_images=12, size=(96, 128), seed=3)
    return root


@pytest.fixture(scope="module")
def encoder() -> SSDTargetEncoder:
    return SSDTargetEncoder(AnchorGenerator.preset("ssd300_voc"), 300, 3)


def _batches(loader: object) -> list[dict]:
    return list(loader)  # type: ignore[call-overload]


def test_batch_contract_and_workers_give_identical_batches(synth: Path, encoder: SSDTargetEncoder) -> None:
    ds = VOCDataset(synth, "train", classes=["red", "green", "blue"], verbose=False)
    runs = {}
    for workers in (0, 2):
        loader = build_loader(ds, 4, shuffle=True, workers=workers, transforms=ssd_augmentation(300),
                              encoder=encoder, seed=7)
        runs[workers] = (_batches(loader), _batches(loader))
    b = runs[0][0][0]
    assert b["images"].dtype == torch.uint8 and b["images"].shape == (4, 3, 300, 300) and b["images"].is_contiguous()
    assert b["labels"].shape == (4, 8732) and b["labels"].dtype == torch.int64
    assert b["box_targets"].shape == (4, 8732, 4) and b["box_targets"].dtype == torch.float32
    assert b["inverse"].shape == (4, 4) and b["orig_size"].tolist() == [[96, 128]] * 4
    assert len(b["targets"]) == 4 and len(b["image_ids"]) == 4
    assert {k for k in b["targets"][0]} >= {"boxes", "labels", "difficult", "image_id", "orig_size", "inverse"}
    for e in (0, 1):
        for x, y in zip(runs[0][e], runs[2][e]):
            assert x["image_ids"] == y["image_ids"]
            assert torch.equal(x["images"], y["images"]) and torch.equal(x["labels"], y["labels"])
            assert torch.allclose(x["box_targets"], y["box_targets"])
    assert runs[0][0][0]["image_ids"] != runs[0][1][0]["image_ids"] or not torch.equal(
        runs[0][0][0]["images"], runs[0][1][0]["images"])  # epochs differ


def test_encoding_in_worker_equals_main_and_direct(synth: Path, encoder: SSDTargetEncoder) -> None:
    ds = VOCDataset(synth, "train", classes=["red", "green", "blue"], verbose=False)
    tf = eval_preprocessing(300)
    a = _batches(build_loader(ds, 3, workers=2, transforms=tf, encoder=encoder, encode_in="worker"))
    b = _batches(build_loader(ds, 3, workers=0, transforms=tf, encoder=encoder, encode_in="main"))
    for x, y in zip(a, b):
        assert torch.equal(x["labels"], y["labels"]) and torch.equal(x["box_targets"], y["box_targets"])
        lab, _tgt = encoder([t["boxes"] for t in y["targets"]], [t["labels"] for t in y["targets"]])
        assert torch.equal(lab, y["labels"])
        # deterministic preprocessing: inverse maps the boxes back to the annotation
        for t in y["targets"]:
            i = ds.image_ids.index(t["image_id"])
            from ssdkit.data import invert_boxes

            np.testing.assert_allclose(invert_boxes(t["boxes"], t["inverse"]).numpy(), ds.records[i].boxes, atol=1e-3)


def test_collate_pickles_with_its_encoder(encoder: SSDTargetEncoder) -> None:
    c = pickle.loads(pickle.dumps(Collate(encoder)))
    boxes = [torch.tensor([[10.0, 10.0, 100.0, 120.0]])]
    labels = [torch.tensor([2])]
    assert torch.equal(c.encoder(boxes, labels)[0], encoder(boxes, labels)[0])


def test_distributed_sampler_and_errors(synth: Path) -> None:
    from torch.utils.data import DistributedSampler

    ds = VOCDataset(synth, "train", verbose=False)
    parts = []
    for rank in (0, 1):
        sampler = DistributedSampler(range(len(ds)), num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = build_loader(ds, 2, sampler=sampler, transforms=eval_preprocessing(64))
        ids = [i for b in loader for i in b["image_ids"]]
        ids2 = [i for b in loader for i in b["image_ids"]]
        assert ids != ids2 or len(ids) < 3  # set_epoch reshuffles
        parts.append(set(ids))
    assert parts[0] | parts[1] == set(ds.image_ids)
    with pytest.raises(ValueError, match="not both"):
        build_loader(ds, 2, shuffle=True, sampler=DistributedSampler(range(len(ds)), num_replicas=1, rank=0))
    with pytest.raises(DataError, match="different sizes"):
        make = VOCDataset(synth, "train", verbose=False)
        from ssdkit.data.transforms import RandomPatch

        _batches(build_loader(make, 4, transforms=RandomPatch("h_w", 0.3, 1.0), seed=1))


def test_set_epoch_is_reproducible(synth: Path) -> None:
    ds = VOCDataset(synth, "train", verbose=False)
    loader = build_loader(ds, 3, shuffle=True, transforms=ssd_augmentation(64), seed=2)
    loader.set_epoch(5)
    a = _batches(loader)
    loader.set_epoch(5)
    b = _batches(loader)
    assert loader.epoch == 5
    for x, y in zip(a, b):
        assert torch.equal(x["images"], y["images"])


def test_memory_and_hdf5_caches(tmp_path: Path) -> None:
    synth = tmp_path / "voc"
    make_synthetic_voc(str(synth), n_images=8, size=(96, 128), seed=4)
    tmp_path = tmp_path / "cache"
    plain = VOCDataset(synth, "train", verbose=False)
    mem = VOCDataset(synth, "train", cache="memory", verbose=False)
    h5 = VOCDataset(synth, "train", cache="hdf5", cache_dir=str(tmp_path), verbose=False)
    files = list(tmp_path.glob("*.h5"))
    assert len(files) == 1
    for i in range(len(plain)):
        ref = plain.read_image(i)
        np.testing.assert_array_equal(mem.read_image(i), ref)
        np.testing.assert_array_equal(h5.read_image(i), ref)
    with pytest.raises(ValueError):
        mem.read_image(0)[0, 0, 0] = 1  # read-only views: transforms never write into the cache
    img, _t = h5[1]
    assert img.shape == (3, 96, 128)
    # workers (fork) read both caches
    for ds in (mem, h5):
        got = [b["image_ids"] for b in build_loader(ds, 3, workers=2, transforms=eval_preprocessing(32))]
        assert sum(len(g) for g in got) == len(ds)
    assert pickle.loads(pickle.dumps(h5)).read_image(0).shape == (96, 128, 3)
    # reused while unchanged, rebuilt atomically when an image changes
    mtime = files[0].stat().st_mtime_ns
    VOCDataset(synth, "train", cache="hdf5", cache_dir=str(tmp_path), verbose=False)
    assert files[0].stat().st_mtime_ns == mtime
    victim = Path(plain.records[0].path)
    import cv2

    cv2.imwrite(str(victim), np.full((96, 128, 3), 7, np.uint8))
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    h5b = VOCDataset(synth, "train", cache="hdf5", cache_dir=str(tmp_path), verbose=False)
    assert files[0].stat().st_mtime_ns != mtime
    assert np.abs(h5b.read_image(0).astype(int) - 7).max() <= 2
    assert list(tmp_path.glob("*.tmp-*")) == []
