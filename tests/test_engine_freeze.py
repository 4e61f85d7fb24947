"""Freezing leading layers (train.freeze, train.freeze_stride): which layers, what stays fixed, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_utils import make_tiny_voc, tiny_config

from ssdkit.checkpoint import load_checkpoint
from ssdkit.cli.main import main as cli_main
from ssdkit.engine.config import load_config
from ssdkit.engine.freeze import freeze_modules, keep_frozen_in_eval, modules_up_to_stride
from ssdkit.engine.trainer import Trainer, train
from ssdkit.errors import ConfigError
from ssdkit.models import build_model

TOY_STRIDE2 = ["backbone.block1_conv", "backbone.block1_conv_bn", "backbone.block1_conv_relu"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_voc(tmp_path_factory.mktemp("voc"))


def test_modules_up_to_stride_toy() -> None:
    m = build_model("toy_ssd", n_classes=3, image_size=64, width=4)
    assert modules_up_to_stride(m, 1) == []
    assert modules_up_to_stride(m, 2) == TOY_STRIDE2
    conv2 = ["backbone.block2_conv1", "backbone.block2_conv1_bn", "backbone.block2_conv1_relu",
             "backbone.block2_conv2", "backbone.block2_conv2_bn", "backbone.block2_conv2_relu"]
    assert modules_up_to_stride(m, 4) == TOY_STRIDE2 + conv2
    assert modules_up_to_stride(m, 3) == TOY_STRIDE2  # stride 4 outputs are coarser than 3
    assert m.training  # the probe restores the mode
    m.backbone.block1_conv_bn.eval()  # ... of each module: a frozen layer stays in eval mode
    assert modules_up_to_stride(m, 2) == TOY_STRIDE2
    assert not m.backbone.block1_conv_bn.training and m.backbone.block2_conv1_bn.training


def test_modules_up_to_stride_mobilenet_means_the_same_layers_with_stride8() -> None:
    plain = build_model("ssdlite320_mobilenet_v2", n_classes=3, image_size=300)
    s8 = build_model("ssdlite320_mobilenet_v2", n_classes=3, image_size=300, stride8=True)
    names = modules_up_to_stride(plain, 4)
    # the stem and the three blocks up to stride 4, and the 1x1 expansion of the first stride-8 block
    assert names == ["backbone.stage1.0", "backbone.stage1.1", "backbone.stage1.2", "backbone.stage1.3",
                     "backbone.stage1.4.conv.0"]
    names8 = modules_up_to_stride(s8, 4)
    assert [n.replace("stage0", "stage1") for n in names8] == names  # stride8 renumbers, the layers are the same
    shapes = [[p.shape for p in dict(plain.named_modules())[n].parameters()] for n in names]
    assert shapes == [[p.shape for p in dict(s8.named_modules())[n].parameters()] for n in names8]
    # odd sizes: a 75x75 map of a 301 px input is stride 4 (rounding up as the convolutions do)
    assert modules_up_to_stride(plain, 4, image_size=(301, 301)) == names


def test_vgg_stride2_freezes_conv1_and_conv2() -> None:
    m = build_model("ssd300_vgg16", n_classes=2)
    assert modules_up_to_stride(m, 2) == [f"backbone.base.{n}" for n in
                                          ("conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2")]


def test_freeze_modules_fixes_weights_and_batchnorm_and_reports_unknown_names() -> None:
    m = build_model("toy_ssd", n_classes=3, image_size=64, width=4)
    n = freeze_modules(m, TOY_STRIDE2)
    conv, bn = dict(m.named_modules())["backbone.block1_conv"], dict(m.named_modules())["backbone.block1_conv_bn"]
    assert n == conv.weight.numel() + bn.weight.numel() + bn.bias.numel() == 4 * 3 * 9 + 8
    assert not conv.weight.requires_grad and not bn.weight.requires_grad
    assert sum(p.requires_grad for p in m.parameters()) == len(list(m.parameters())) - 3
    m.train()
    keep_frozen_in_eval(m, TOY_STRIDE2)
    assert not bn.training and m.backbone.block2_conv1_bn.training
    mean0 = bn.running_mean.clone()
    m(torch.rand(2, 3, 64, 64) * 255)
    assert torch.equal(bn.running_mean, mean0)  # frozen statistics
    assert freeze_modules(m, TOY_STRIDE2) == 0  # already frozen: nothing newly frozen
    with pytest.raises(ConfigError, match=r"train\.freeze: no module named 'backbone\.block1_cnv'.*"
                                          r"did you mean backbone\.block1_conv"):
        freeze_modules(m, ["backbone.block1_cnv"])
    with pytest.raises(ConfigError, match=r"top-level modules: input_norm, backbone, heads"):
        freeze_modules(m, ["encoder"])


def test_training_keeps_frozen_layers_fixed_and_resume_keeps_them_frozen(voc: Path, tmp_path: Path) -> None:
    cfg = tiny_config(voc, tmp_path, epochs=1, plots=False, tensorboard=False, freeze_stride=2)
    tr = Trainer(cfg).setup()
    assert tr.frozen == TOY_STRIDE2
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    opt_params = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    frozen_params = [p for n, p in tr.model.named_parameters() if n.startswith("backbone.block1_conv")]
    assert frozen_params and not any(id(p) in opt_params for p in frozen_params)
    res = tr.fit()
    after = ssdkit_state(res.run_dir / "last.pt")
    for k, v in before.items():
        same = torch.equal(v, after[k])
        if k.startswith("backbone.block1_conv"):  # weights and BatchNorm statistics
            assert same, k
    assert not torch.equal(before["backbone.block2_conv1.weight"], after["backbone.block2_conv1.weight"])
    assert not torch.equal(before["backbone.block2_conv1_bn.running_mean"],
                           after["backbone.block2_conv1_bn.running_mean"])
    # resume: the checkpoint's config brings the freeze back
    res2 = train(None, ["train.epochs=2"], resume=res.run_dir / "last.pt")
    assert res2.epochs_completed == 2
    after2 = ssdkit_state(res2.run_dir / "last.pt")
    assert all(torch.equal(before[k], after2[k]) for k in before if k.startswith("backbone.block1_conv"))
    assert not torch.equal(after["backbone.block2_conv1.weight"], after2["backbone.block2_conv1.weight"])


def ssdkit_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def test_freeze_config_errors(voc: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.freeze"):
        load_config(tiny_config(voc, tmp_path, freeze=[3]))
    with pytest.raises(ConfigError, match=r"train\.freeze_stride"):
        load_config(tiny_config(voc, tmp_path, freeze_stride=-1))
    with pytest.raises(ConfigError, match=r"no module named 'backbone\.nope'"):
        Trainer(tiny_config(voc, tmp_path, freeze=["backbone.nope"])).setup()


def test_cli_models_lists_module_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["models", "toy_ssd", "--modules", "2"]) == 0
    out = capsys.readouterr().out
    assert "backbone.block1_conv " in out and "16x64x64" in out and "heads" in out
    assert cli_main(["models", "toy_ssd", "--modules", "0"]) == 2
    assert "ssdkit models: error: --modules must be >= 1, got 0" in capsys.readouterr().err
    assert cli_main(["models", "toy", "--modules", "2"]) == 2
    assert "unknown model(s) ['toy']" in capsys.readouterr().err
