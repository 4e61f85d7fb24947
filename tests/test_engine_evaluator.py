"""``evaluate``: boxes are scored in the original image pixels; an oracle network gets mAP 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssdkit.data import build_dataset
from ssdkit.data.synthetic import make_synthetic_voc
from ssdkit.engine.evaluator import evaluate, make_eval_loader
from ssdkit.models import build_model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("voc96x128")
    make_synthetic_voc(str(root), n_images=8, size=(96, 128), seed=1, max_objects=3, splits={"val": 1.0})
    return build_dataset({"format": "voc", "root": str(root), "val": "val", "classes": ["red", "green", "blue"],
                          "policy": {"keep_images_without_gt": False}}, "val")


def test_an_oracle_network_scores_map_one_in_original_pixels(dataset) -> None:  # type: ignore[no-untyped-def]
    model = build_model("toy_ssd", class_names=dataset.classes, image_size=64, width=4).eval()
    encoder = model.make_encoder()
    loader = make_eval_loader(model, dataset, batch_size=3, encoder=encoder)
    outputs = []
    for batch in loader:  # the oracle: one-hot class scores on the matched anchors, exact box offsets
        labels, box_t = batch["labels"], batch["box_targets"]
        logits = torch.full((*labels.shape, model.n_classes + 1), -20.0)
        logits.scatter_(2, labels.clamp(min=0)[..., None], 20.0)
        outputs.append((logits, box_t))
    it = iter(outputs)
    out = evaluate(model, loader, "voc10", forward=lambda images: next(it), loss_fn=None)
    assert out.map == pytest.approx(1.0) and out.n_images == len(dataset)
    for t, i in zip(out.targets, range(len(dataset))):
        ann = dataset.annotation(i)
        assert t["image_id"] == ann["image_id"] and t["orig_size"] == (96, 128)
        assert torch.allclose(t["boxes"], torch.as_tensor(ann["boxes"]), atol=1e-3)
    for d, t in zip(out.detections, out.targets):  # detections are in the original frame
        assert d[:, 2].max() <= 128 and d[:, 3].max() <= 96
        assert len(d) >= len(t["boxes"])
    assert out.to_dict()["map"] == pytest.approx(1.0)


def test_evaluate_a_dataset_with_loss_samples_and_coco(dataset) -> None:  # type: ignore[no-untyped-def]
    from ssdkit.loss import MultiBoxLoss

    model = build_model("toy_ssd", class_names=dataset.classes, image_size=64, width=4)
    out = evaluate(model, dataset, "voc07", batch_size=4, loss_fn=MultiBoxLoss(), keep_samples=2)
    assert out.val_loss is not None and out.val_loss > 0 and len(out.samples) == 2
    assert out.samples[0].image.shape == (3, 64, 64) and model.training  # mode restored
    coco = evaluate(model, dataset, "coco", batch_size=8)
    assert coco.metric == "coco" and 0.0 <= coco.map <= 1.0
    with pytest.raises(ValueError, match="metric must be one of"):
        evaluate(model, dataset, "map50")


def test_trainer_device_and_amp_helpers() -> None:
    from ssdkit.engine.trainer import select_device
    from ssdkit.errors import ConfigError

    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="not a device"):
        select_device("gpu0")


def test_missing_split_in_eval_is_skipped(tmp_path: Path) -> None:
    from engine_utils import make_tiny_voc, tiny_config

    from ssdkit.engine.trainer import train

    voc = make_tiny_voc(tmp_path / "voc")
    cfg = tiny_config(voc, tmp_path, epochs=1, plots=False, tensorboard=False)
    del cfg["data"]["val"]
    res = train(cfg)
    assert res.metrics == {} and res.best_metric == "loss" and res.best is not None
