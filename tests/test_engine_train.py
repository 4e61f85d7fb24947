"""Training runs on tiny generated data: artefacts, loss decrease, stops (NaN, early, time), AMP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from engine_utils import make_tiny_voc, tiny_config

import ssdkit
from ssdkit.checkpoint import load_checkpoint
from ssdkit.engine.logging import read_csv
from ssdkit.engine.trainer import NonFiniteLossError, Trainer, build_optimizer, train
from ssdkit.errors import ConfigError


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_voc(tmp_path_factory.mktemp("voc"))


def test_two_epochs_lower_the_loss_and_write_every_artefact(voc: Path, tmp_path: Path) -> None:
    cfg = tiny_config(voc, tmp_path, checkpoint_template="ep{epoch:02d}_loss{loss:.3f}_val{val_loss:.3f}_map{map:.3f}")
    res = ssdkit.train(cfg)
    assert res.stop_reason == "completed" and res.epochs_completed == 2 and res.iteration == 6
    rows = read_csv(res.run_dir / "results.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["loss"] < rows[0]["loss"]
    assert all(r["val_loss"] is not None and r["map"] is not None for r in rows)
    rd = res.run_dir
    for name in ("config.yaml", "last.pt", "best.pt", "results.csv", "iterations.csv", "loss.png", "map.png",
                 "pr_curves.png", "val_predictions.png", "metrics.json", "train.log"):
        assert (rd / name).is_file(), name
    assert list((rd / "tb").glob("events.out.tfevents.*"))
    assert len(list(rd.glob("ep0*_loss*_val*_map*.pt"))) == 2
    assert len(read_csv(rd / "iterations.csv")) == 6
    metrics = json.loads((rd / "metrics.json").read_text())
    assert metrics["stop_reason"] == "completed" and metrics["final"]["metric"] == "voc07"
    assert metrics["best"]["metric"] == "map" and len(metrics["final"]["per_class"]) == 3
    saved = yaml.safe_load((rd / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["model"]["name"] == "toy_ssd"
    ck = load_checkpoint(rd / "last.pt")
    assert ck["config"]["name"] == "tiny" and ck["epoch"] == 2 and ck["iteration"] == 6
    assert set(ck["rng"]) >= {"python", "numpy", "torch"}
    model = ssdkit.load(rd / "best.pt")
    assert model.class_names == ["red", "green", "blue"]
    dets = model.predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert dets[0].shape[1] == 6
    # a second run with the same name does not overwrite the first one
    res2 = train(cfg, ["train.epochs=1", "eval.every=0", "train.plots=false"])
    assert res2.run_dir == rd.with_name("tiny-2") and res2.best_metric == "loss"


def test_nan_loss_stops_with_epoch_and_iteration_and_keeps_the_last_good_checkpoint(voc: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(voc, tmp_path, epochs=3), ["eval.every=0"]).setup()
    calls = {"n": 0}

    def poison(module: torch.nn.Module, inputs: tuple, output: tuple) -> tuple:
        calls["n"] += 1
        if module.training and calls["n"] == 5:  # epoch 2, second batch
            return output[0] * float("nan"), output[1]
        return output

    trainer.model.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan.*at epoch 2, iteration 5 \(batch 2 of the "
                                                 r"epoch\); the last good checkpoint is .*last\.pt") as info:
        trainer.fit()
    assert info.value.epoch == 2 and info.value.iteration == 5
    ck = load_checkpoint(trainer.run_dir / "last.pt")
    assert ck["epoch"] == 1 and ck["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    assert json.loads((trainer.run_dir / "metrics.json").read_text())["stop_reason"] == "nan"

    # stop_on_nan=false skips the poisoned batch and goes on
    calls["n"] = 0
    trainer2 = Trainer(tiny_config(voc, tmp_path, epochs=2, stop_on_nan=False), ["eval.every=0", "name=skip"]).setup()
    trainer2.model.register_forward_hook(poison)
    res = trainer2.fit()
    assert res.stop_reason == "completed" and res.iteration == 6
    assert json.loads((res.run_dir / "metrics.json").read_text())["skipped_batches"] == 1


def test_early_stopping_and_time_limit(voc: Path, tmp_path: Path) -> None:
    res = train(tiny_config(voc, tmp_path, epochs=6, early_stop_patience=2, early_stop_by="val_loss",
                            early_stop_min_delta=1e9, plots=False, tensorboard=False))
    assert res.stop_reason == "early_stop" and res.epochs_completed == 3
    res = train(tiny_config(voc, tmp_path, epochs=6, time_limit_min=1e-4, plots=False, tensorboard=False),
                ["name=timed"])
    assert res.stop_reason == "time_limit" and res.epochs_completed == 1
    assert len(read_csv(res.run_dir / "results.csv")) == 1


def test_bf16_autocast_channels_last_sgd_and_iteration_schedule(voc: Path, tmp_path: Path) -> None:
    res = train(tiny_config(voc, tmp_path, epochs=1, amp="bf16", channels_last=True, grad_clip=5.0, plots=False),
                ["optimizer.name=sgd", "optimizer.lr=0.01", "optimizer.nesterov=true", "schedule.name=cosine",
                 "schedule.by=iter", "schedule.warmup_iters=2", "train.max_iters_per_epoch=2"])
    assert res.iteration == 2 and all(math.isfinite(v) for _, *vals in res.losses for v in vals)
    lrs = [r["lr"] for r in read_csv(res.run_dir / "iterations.csv")]
    assert lrs[0] == pytest.approx(0.01 * 0.001) and lrs[1] == pytest.approx(0.01 * (0.001 * 0.5 + 0.5) * 0.5)


def test_optimizer_groups_exclude_norm_and_bias() -> None:
    from ssdkit.engine.config import default_config
    from ssdkit.models import build_model

    model = build_model("toy_ssd", n_classes=2, image_size=64, width=4)
    cfg = default_config()["optimizer"]
    opt = build_optimizer(model, {**cfg, "exclude_bn_bias": True})
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == cfg["weight_decay"] and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 4 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(build_optimizer(model, cfg).param_groups) == 1
    with pytest.raises(ConfigError, match=r"optimizer\.nesterov"):
        build_optimizer(model, {**cfg, "nesterov": True, "momentum": 0.0})


def test_time_limit_fit_shortens_the_run_and_the_schedule(voc: Path, tmp_path: Path) -> None:
    res = train(tiny_config(voc, tmp_path, epochs=5, time_limit_min=1e-4, time_limit_fit=True, plots=False,
                            tensorboard=False), ["schedule.name=cosine", "eval.every=3"])
    assert res.stop_reason == "completed" and res.epochs_completed == 1
    assert res.metrics["map"] is not None  # the new last epoch is validated
    ck = load_checkpoint(res.run_dir / "last.pt")
    assert ck["config"]["train"]["epochs"] == 1
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["train"]["epochs"] == 1
