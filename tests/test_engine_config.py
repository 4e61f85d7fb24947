"""Every shipped config validates and builds; impossible values fail early naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_utils import ROOT, make_tiny_voc, tiny_config

from ssdkit.data import build_augmentation, validate_data_config
from ssdkit.engine.config import SCHEMA, Field, load_config
from ssdkit.engine.schedule import LRSchedule
from ssdkit.engine.trainer import Trainer, build_model_from_config, check_template, resolve_amp, section_error
from ssdkit.errors import ConfigError, DataError

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
ISSUE_CONFIGS = {"ssd300_voc0712", "ssd512_voc0712", "ssd300_coco", "ssd7_udacity", "ssd300_mobilenet_v1_voc",
                 "deepfake_faces_ssd300", "toy_digits", "demo", "bccd_ssdlite_mnv2", "raccoon_ssdlite_mnv2",
                 "bccd_ssd7_scratch"}


def test_the_issue_configs_exist() -> None:
    assert {p.stem for p in CONFIGS} >= ISSUE_CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates_and_builds(path: Path) -> None:
    cfg = load_config(path, ["model.backbone_weights=null"])  # weights are not part of the checkout
    data = validate_data_config(cfg["data"])
    classes = cfg["data"]["classes"]
    model = build_model_from_config(cfg["model"], classes, dry_run=True)
    assert model.n_classes == len(classes) and model.num_anchors > 0
    build_augmentation(cfg["augment"], tuple(model.image_size), background=tuple(model.mean))
    if cfg["train"]["checkpoint_template"]:
        check_template(cfg["train"]["checkpoint_template"])
    assert (data["train"] and cfg["name"] == path.stem) or path.stem == "demo"


def test_recipe_details() -> None:
    voc = load_config(ROOT / "configs" / "ssd300_voc0712.yaml")
    assert voc["optimizer"] == {**voc["optimizer"], "name": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0005}
    assert voc["schedule"]["milestones"] == [56000, 76000] and voc["train"]["batch_size"] == 32
    fake = load_config(ROOT / "configs" / "deepfake_faces_ssd300.yaml")
    assert fake["data"]["classes"] == ["real", "fake"] and fake["model"]["mean"] == [139, 121, 113]
    assert fake["data"]["root"].startswith("s3://") and fake["data"]["format"] == "csv"
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=fake["optimizer"]["lr"])
    sched = LRSchedule(opt, **{k: fake["schedule"][k] for k in ("name", "by", "milestones", "gamma")})
    lrs = [sched.lrs_at(e, 0)[0] for e in range(fake["train"]["epochs"])]
    assert lrs == pytest.approx([1e-3] * 8 + [1e-4] * 4 + [1e-5] * 3)
    udacity = load_config(ROOT / "configs" / "ssd7_udacity.yaml")
    assert udacity["model"]["image_size"] == [300, 480] and len(udacity["data"]["classes"]) == 5


@pytest.mark.parametrize("name", ["bccd_ssdlite_mnv2", "raccoon_ssdlite_mnv2", "bccd_ssd7_scratch"])
def test_real_data_recipes_read_their_data_and_take_a_root_override(
        name: str, shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real-data configs find ../shared from the checkout root, and data.root moves them elsewhere."""
    from ssdkit.data import build_dataset

    cfg_path = ROOT / "configs" / f"{name}.yaml"
    data = "bccd" if name.startswith("bccd") else "raccoon"
    monkeypatch.chdir(ROOT)  # relative data roots resolve against the working directory
    cfg = load_config(cfg_path, ["model.backbone_weights=null"])
    sizes = {s: len(build_dataset(cfg["data"], s, check_images="none", verbose=False)) for s in ("train", "val")}
    assert sizes == ({"train": 205, "val": 87} if data == "bccd" else {"train": 160, "val": 40})
    moved = load_config(cfg_path, [f"data.root={tmp_path / 'elsewhere'}"])
    assert moved["data"]["root"] == str(tmp_path / "elsewhere")
    with pytest.raises((FileNotFoundError, ConfigError, DataError), match="elsewhere"):
        build_dataset(moved["data"], "train", check_images="none", verbose=False)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.scales=[0.1, 0.2, 0.3]"], r"^model\.scales: .*scales must have n_layers \+ 1 = 4 values"),
        (["model.name=ssd9000"], r"^model\.name: unknown model 'ssd9000'"),
        (["model.bogus=1"], r"^model\.bogus: unknown option"),
        (["model.width=0"], r"^model\.width: toy_ssd: width must be an int in 1\.\.256"),
        (["model.mean=[1, 2]"], r"^model\.mean: "),
        (["train.checkpoint_template=ep{epock}.pt"], r"train\.checkpoint_template: unknown field \{epock\}"),
        (["train.amp=fp16"], r"train\.amp: fp16 autocast needs a CUDA device"),
    ],
)
@pytest.mark.parametrize("classes_known", [True, False])
def test_model_errors_come_before_any_data_is_read(overrides: list[str], match: str, classes_known: bool,
                                                   tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "does-not-exist", tmp_path)
    if not classes_known:
        cfg["data"]["classes"] = None
    with pytest.raises(ConfigError, match=match):
        Trainer(cfg, overrides).setup()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["augment.brightness=[1,2,3]"], r"augment\.brightness: unknown key for chain 'none'"),
        (["data.val={image_sett: val}"], r"data\.val\.image_sett: unknown key"),
        (["data.format=parquet"], r"data\.format: must be one of"),
        (["encoder.matching=hungarian"], r"encoder\.matching: must be one of"),
        (["train.device=cuda:7"], r"train\.device: 'cuda:7'"),
        (["name=a/b"], r"name: must be a plain folder name"),
        (["schedule.monitor=accuracy"], r"schedule\.monitor: must be one of"),
        (["train.early_stop_by=f1"], r"train\.early_stop_by: must be"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], match: str, tmp_path: Path) -> None:
    voc = make_tiny_voc(tmp_path / "voc")
    if overrides[0].startswith("train.device") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ConfigError, match=match):
        Trainer(tiny_config(voc, tmp_path), overrides).setup()


def test_helpers() -> None:
    assert check_template("ep{epoch:02d}") == "ep{epoch:02d}.pt"
    with pytest.raises(ConfigError, match="without folders"):
        check_template("a/{epoch}.pt")
    assert resolve_amp(False, torch.device("cpu")) == (None, False)
    assert resolve_amp(True, torch.device("cpu")) == (torch.bfloat16, False)
    e = section_error("model", ["scales", "min_scale"], ValueError("toy: min_scale must be < max_scale"))
    assert str(e).startswith("model.min_scale: ")
    assert str(section_error("model", [], ValueError("odd"))) == "model: odd"


def test_every_schema_key_is_documented() -> None:
    doc = (ROOT / "docs" / "training.md").read_text()
    missing = []
    for section, spec in SCHEMA.items():
        if isinstance(spec, Field):
            keys = [section]
        else:
            keys = [f"{section}.{k}" for k in spec]
        missing += [k for k in keys if f"`{k}`" not in doc]
    assert not missing, f"docs/training.md does not document {missing}"
