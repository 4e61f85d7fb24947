"""ssdkit.checkpoint: round trips, training extras, atomic writes, refusing unsafe or broken files,
and loading into a model with another class count."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from models_utils import images

import ssdkit
from ssdkit import checkpoint
from ssdkit.errors import CheckpointError
from ssdkit.models import build_model, load_weights


@pytest.mark.parametrize(
    "name,kw",
    [
        ("toy_ssd", {"class_names": ["zero", "one"], "scales": [0.15, 0.3, 0.5, 0.9], "mean": [1.0, 2.0, 3.0]}),
        ("ssd7", {"image_size": (120, 200), "aspect_ratios": [[1.0, 2.0], [1.0], [0.5, 1.0], [1.0, 3.0]],
                  "steps": [8, 16, (32, 30), 64], "offsets": [0.5, 0.3, (0.5, 0.25), 0.5], "clip_boxes": True}),
        ("ssdlite320_mobilenet_v3_large", {"image_size": 192, "variances": [0.1, 0.1, 0.25, 0.25]}),
        ("ssd300_mobilenet_v1", {"head_kernel": 1, "width": 0.5, "swap_channels": [2, 1, 0]}),
    ],
)
def test_round_trip_rebuilds_everything_and_gives_identical_outputs(tmp_path, name, kw):
    torch.manual_seed(0)
    image_size = kw.pop("image_size", None)
    model = build_model(name, 2, image_size=image_size, **kw)
    model.train()
    x = images(3, *model.image_size)
    for _ in range(2):  # move the BN running statistics away from their init
        model(x)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    path = ssdkit.save(tmp_path / "run" / "best.pt", model, epoch=7)
    back = ssdkit.load(path)  # no argument repeated by the user
    assert not back.training
    assert back.config == model.config and back.class_names == model.class_names
    assert back.variances == model.variances and back.image_size == model.image_size
    assert (back.mean, back.std, back.swap_channels) == (model.mean, model.std, model.swap_channels)
    assert torch.equal(back.anchors, model.anchors)
    with torch.no_grad():
        out = back(x)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temporary file left behind


def test_training_extras_are_weights_only_safe(tmp_path):
    model = build_model("toy_ssd", 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(images(2, 128, 128))[0].sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [3, 5])
    import random

    path = checkpoint.save(
        tmp_path / "last.pt", model,
        optimizer=opt.state_dict(), scheduler=sched.state_dict(), epoch=3, metrics={"mAP": np.float64(0.5)},
        rng={"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        config={"data": {"root": Path("/data/bccd")}, "classes": {"a", "b"}}, history=np.arange(3),
    )
    ck = checkpoint.load_checkpoint(path)
    assert ck["format"] == "ssdkit" and ck["version"] == 1 and ck["epoch"] == 3
    assert ck["class_names"] == ["class_1", "class_2"] and ck["model"]["name"] == "toy_ssd"
    assert ck["metrics"] == {"mAP": 0.5} and isinstance(ck["metrics"]["mAP"], float)
    assert ck["config"] == {"data": {"root": "/data/bccd"}, "classes": ["a", "b"]}
    assert torch.equal(ck["history"], torch.arange(3))
    np_state = ck["rng"]["numpy"]
    assert np_state[0] == "MT19937" and isinstance(np_state[1], torch.Tensor)
    opt2 = torch.optim.SGD(build_model("toy_ssd", 2).parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ck["optimizer"])
    assert opt2.param_groups[0]["lr"] == 0.01
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def test_unsafe_extras_are_refused_at_save_time_and_nothing_is_written(tmp_path):
    model = build_model("toy_ssd", 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(CheckpointError, match=r"entry optimizer is a torch\.optim\.sgd\.SGD.*state_dict"):
        checkpoint.save(tmp_path / "a.pt", model, optimizer=opt)
    with pytest.raises(CheckpointError, match=r"entry metrics\.curve\[1\]"):
        checkpoint.save(tmp_path / "a.pt", model, metrics={"curve": [1.0, object()]})
    with pytest.raises(CheckpointError, match="reserved"):
        checkpoint.save(tmp_path / "a.pt", model, state_dict={})
    with pytest.raises(CheckpointError, match="not an ssdkit model"):
        checkpoint.save(tmp_path / "a.pt", torch.nn.Linear(2, 2))
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic(tmp_path, monkeypatch):
    model = build_model("toy_ssd", 2)
    path = checkpoint.save(tmp_path / "best.pt", model, epoch=1)
    before = path.read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, model, epoch=2)
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # and the temporary file is gone


def test_broken_and_foreign_files_are_refused_naming_the_file(tmp_path):
    model = build_model("toy_ssd", 2)
    good = checkpoint.save(tmp_path / "good.pt", model)
    data = good.read_bytes()
    cases = {
        "missing.pt": None,
        "truncated.pt": data[: len(data) // 2],
        "empty.pt": b"",
        "junk.pt": b"hello, not a checkpoint",
        "config.yaml": b"model:\n  name: ssd7\n",
    }
    for name, content in cases.items():
        p = tmp_path / name
        if content is not None:
            p.write_bytes(content)
        with pytest.raises(CheckpointError) as exc:
            ssdkit.load(p)
        assert str(p) in str(exc.value)
        assert ("not found" in str(exc.value)) == (content is None)
        assert "pickled Python objects" not in str(exc.value)
    pickled = tmp_path / "whole_model.pt"
    torch.save(model, pickled)  # a pickled nn.Module: needs unpickling arbitrary classes
    with pytest.raises(CheckpointError, match=r"whole_model\.pt contains pickled Python objects"):
        ssdkit.load(pickled)
    plain = tmp_path / "state.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(CheckpointError, match=r"plain state dict.*load_weights"):
        ssdkit.load(plain)
    future = tmp_path / "future.pt"
    ck = checkpoint.load_checkpoint(good)
    torch.save({**ck, "version": 99}, future)
    with pytest.raises(CheckpointError, match="version 99"):
        ssdkit.load(future)
    with pytest.raises(CheckpointError, match="directory"):
        ssdkit.load(tmp_path)


def test_loading_into_another_class_count_keeps_matching_weights(tmp_path, caplog):
    src = build_model("ssd7", 20, image_size=(120, 160))
    path = checkpoint.save(tmp_path / "voc.pt", src)
    dst = build_model("ssd7", 3, image_size=(120, 160))
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="ssdkit.models"):
        report = load_weights(dst, checkpoint.load_checkpoint(path)["state_dict"])
    assert report.reset_modules() == [f"heads.cls.{k}" for k in range(4)]
    assert "reset (shape mismatch) 8: heads.cls.0, heads.cls.1, heads.cls.2, heads.cls.3" in caplog.text
    assert not report.missing and not report.unexpected
    for k, v in dst.state_dict().items():
        if k.startswith("heads.cls."):
            assert torch.equal(v, before[k]), k  # reset heads keep the new model's init
        else:
            assert torch.equal(v, src.state_dict()[k]), k  # backbone, BN statistics and box heads load
    # the checkpoint-level helper accepts a path; strict mode refuses the mismatch
    assert checkpoint.load_weights(dst, path, verbose=False).reset_modules() == report.reset_modules()
    with pytest.raises(ValueError, match="does not match"):
        load_weights(dst, src.state_dict(), strict=True)


def test_load_puts_the_model_on_the_device_and_is_fast_to_rebuild(tmp_path):
    model = build_model("ssd300_vgg16", 2)
    path = checkpoint.save(tmp_path / "ssd300.pt", model)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params * 4 < os.path.getsize(path) < n_params * 4 + 200_000
    back = checkpoint.load(path, device="cpu")
    assert next(back.parameters()).device.type == "cpu"
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
