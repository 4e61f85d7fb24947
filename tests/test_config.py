"""Config loading, validation errors and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssdkit.engine.config import apply_overrides, default_config, dump_config, load_config, validate_config
from ssdkit.errors import ConfigError

MINIMAL = {"model": {"name": "ssd7"}, "data": {"format": "voc", "root": "/x"}}


def test_defaults_filled_and_roundtrip(tmp_path: Path) -> None:
    cfg = validate_config(MINIMAL)
    assert cfg["train"]["epochs"] == default_config()["train"]["epochs"]
    assert cfg["encoder"] == {"matching": "multi", "pos_iou_threshold": 0.5, "neg_iou_limit": 0.3}
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(MINIMAL))
    cfg = load_config(p, ["data.root=/data/bccd", "train.epochs=3", "schedule.milestones=[1, 2]",
                          "train.amp=bf16", "model.scales=[0.1, 0.2, 0.3]", "train.grad_clip=null"])
    assert cfg["data"]["root"] == "/data/bccd" and cfg["train"]["epochs"] == 3
    assert cfg["schedule"]["milestones"] == [1, 2] and cfg["train"]["amp"] == "bf16"
    assert cfg["model"]["scales"] == [0.1, 0.2, 0.3] and cfg["train"]["grad_clip"] is None
    raw: dict = {}
    apply_overrides(raw, ["a.b.c=1"])
    assert raw == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"trian": {}}, r"trian: unknown key \(did you mean 'train'\?\)"),
        ({"train": {"epochs": "ten"}}, r"train\.epochs: expected an integer, got 'ten'"),
        ({"train": {"epochs": 0}}, r"train\.epochs: must be >= 1"),
        ({"train": {"batch_size": 2.5}}, r"train\.batch_size: expected an integer"),
        ({"train": {"bacth_size": 2}}, r"train\.bacth_size: unknown key \(did you mean 'batch_size'\?\)"),
        ({"optimizer": {"name": "lbfgs"}}, r"optimizer\.name: must be one of 'sgd', 'adam', 'adamw'"),
        ({"optimizer": {"lr": -1}}, r"optimizer\.lr: must be > 0"),
        ({"optimizer": {"lr": float("nan")}}, r"optimizer\.lr: must be finite"),
        ({"encoder": {"pos_iou_threshold": 1.5}}, r"encoder\.pos_iou_threshold: must be <= 1"),
        ({"train": {"stop_on_nan": "yes"}}, r"train\.stop_on_nan: expected true/false"),
        ({"schedule": {"milestones": [5, 2]}}, r"schedule\.milestones: must be increasing"),
        ({"schedule": {"milestones": [50]}}, r"schedule\.milestones: \[50\] go beyond train\.epochs=10"),
        ({"train": {"amp": "fp8"}}, r"train\.amp: must be true, false, 'bf16' or 'fp16'"),
        ({"model": {"name": None}}, r"model\.name: required"),
        ({"eval": {"metric": "map50"}}, r"eval\.metric: must be one of"),
        ({"train": None, "loss": [1]}, r"loss: expected a mapping"),
        ({"name": 3}, r"name: expected a string"),
    ],
)
def test_invalid_values_name_the_key(patch: dict, match: str) -> None:
    cfg = {k: dict(v) for k, v in MINIMAL.items()}
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: ssd7\n  image_size: [300, 480\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:.*line \d+.*invalid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(empty)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(listy)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({**MINIMAL, "train": {"epochs": -3}}))
    with pytest.raises(ConfigError, match=r"wrong\.yaml: train\.epochs: must be >= 1"):
        load_config(wrong)
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        load_config(MINIMAL, ["train.epochs"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(MINIMAL, ["model.name.x=1"])
