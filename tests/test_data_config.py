"""The data: config section, build_dataset for every format, conversion round trips, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssdkit.cli.main import main
from ssdkit.data import VOCDataset, build_dataset, convert_dataset, validate_data_config
from ssdkit.data.synthetic import make_synthetic_voc
from ssdkit.errors import ConfigError


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    make_synthetic_voc(str(root), n_images=10, size=(60, 80), seed=5, difficult_rate=0.3)
    return root


@pytest.mark.parametrize("cfg,msg", [
    ({"format": "vox", "train": "train"}, r"data\.format: must be one of"),
    ({"format": "voc", "root": ".", "trian": "x"}, r"data\.trian: unknown key; did you mean 'train'"),
    ({"format": "voc", "root": "."}, r"data: configure at least one of"),
    ({"format": "voc", "train": {"image_set": 3}, "root": "."}, r"data\.train\.image_set: must be a string or a list"),
    ({"format": "voc", "train": {"imageset": "x"}, "root": "."},
     r"data\.train\.imageset: unknown key; did you mean 'image_set'"),
    ({"format": "voc", "train": [{"image_set": "a"}, {"exclude_difficult": "yes"}], "root": "."},
     r"data\.train\[1\]\.exclude_difficult: must be true/false"),
    ({"format": "csv", "train": {"images_dir": "x"}}, r"data\.train\.labels: required"),
    ({"format": "voc", "root": ".", "train": "t", "policy": {"degenrate": "remove"}},
     r"data\.policy\.degenrate: unknown key; did you mean 'degenerate'"),
    ({"format": "voc", "root": ".", "train": "t", "policy": {"degenerate": "drop"}},
     r"data\.policy\.degenerate: must be one of"),
    ({"format": "voc", "root": ".", "train": "t", "policy": {"min_image_side": 0}}, r"data\.policy\.min_image_side"),
    ({"format": "voc", "root": ".", "train": "t", "cache": "disk"}, r"data\.cache: must be one of"),
    ({"format": "voc", "root": ".", "train": "t", "check_images": "full"}, r"data\.check_images"),
    ({"format": "voc", "root": ".", "train": "t", "classes": "no_such_file.txt"}, r"data\.classes: 'no_such_file.txt'"),
    ({"format": "voc", "root": ".", "train": "t", "classes": ["background", "a", "background"]},
     r"data\.classes: 'background'"),
    ({"format": "voc", "train": "t"}, r"data\.root: required for format 'voc'"),
    ({"format": "voc", "root": ".", "train": "t", "yaml": "d.yaml"}, r"data\.yaml: only used with format 'yolo'"),
])
def test_config_errors_name_the_key_path(cfg: dict, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        validate_data_config(cfg)


def test_build_dataset_every_format_and_round_trips(voc: Path, tmp_path: Path) -> None:
    base = {"format": "voc", "root": str(voc), "train": "train", "val": {"image_set": "val"},
            "check_images": "none"}
    ref = build_dataset(base, "train")
    val = build_dataset(base, "val")
    assert ref.classes == val.classes == sorted({n for r in ref.records for n in ["red", "green", "blue"]})
    both = build_dataset({**base, "train": ["train", "val"]}, "train")
    assert len(both) == len(ref) + len(val)
    concat = build_dataset({**base, "train": [{"image_set": "train"}, {"image_set": "val"}]}, "train")
    assert len(concat) == len(both) and concat.read_image(len(ref)).shape == (60, 80, 3)
    with pytest.raises(ConfigError, match=r"data\.test: this split is not configured"):
        build_dataset(base, "test")

    def same(ds: object) -> None:
        assert ds.classes == ref.classes and ds.image_ids == ref.image_ids, ds  # type: ignore[attr-defined]
        for a in ref.records:
            got = ds.annotation(ds.image_ids.index(a.image_id))  # type: ignore[attr-defined]
            np.testing.assert_allclose(got["boxes"].numpy(), a.boxes, atol=1e-3)
            np.testing.assert_array_equal(got["labels"].numpy(), a.labels)

    coco = convert_dataset(ref, "coco", str(tmp_path / "coco"), "train")
    cds = build_dataset({"format": "coco", "root": str(tmp_path / "coco"),
                         "train": {"annotations": "annotations/instances_train.json", "images_dir": "train"}}, "train")
    assert [int(i) for i in cds.image_ids] == list(range(1, len(ref) + 1))
    cds_ids = {r.image_id: r for r in cds.records}
    assert len(cds_ids) == len(ref)
    csv = convert_dataset(cds, "csv", str(tmp_path / "csv"), "train")
    sds = build_dataset({"format": "csv", "root": str(tmp_path / "csv"),
                         "train": {"labels": "train_labels.csv", "images_dir": "images"}}, "train")
    same(sds)
    convert_dataset(sds, "yolo", str(tmp_path / "yolo"), "train")
    yds = build_dataset({"format": "yolo", "root": str(tmp_path / "yolo"), "train": "train"}, "train")
    same(yds)
    convert_dataset(yds, "voc", str(tmp_path / "voc2"), "train")
    vds = build_dataset({"format": "voc", "root": str(tmp_path / "voc2"), "train": "train"}, "train")
    same(vds)
    assert coco["images"] == csv["images"] == len(ref)
    # difficult flags survive VOC -> COCO -> CSV -> VOC (YOLO has none)
    d_ref = sum(int(r.difficult.sum()) for r in ref.records)
    assert sum(int(r.difficult.sum()) for r in sds.records) == d_ref > 0


def test_classes_are_unified_across_splits(tmp_path: Path) -> None:
    root = tmp_path / "v"
    make_synthetic_voc(str(root), n_images=6, size=(40, 50), classes=("a", "b", "c"), seed=1)
    # make 'val' contain a class that 'train' lacks
    ds = VOCDataset(root, "val", check_images="none", verbose=False)
    xml = Path(root, "Annotations", ds.image_ids[0] + ".xml")
    xml.write_text(xml.read_text().replace("</annotation>",
                                           "<object><name>zz</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                                           "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"))
    cfg = {"format": "voc", "root": str(root), "train": "train", "val": "val", "check_images": "none"}
    assert build_dataset(cfg, "train").classes == build_dataset(cfg, "val").classes
    assert "zz" in build_dataset(cfg, "train").classes


def test_cli_check_exit_codes_and_convert(voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"format": "voc", "root": str(voc), "train": "train", "val": "val"}}))
    assert main(["data", "check", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "boxes per class" in out and "image size" in out and "no errors" in out
    # break an image and an annotation: errors -> exit 1, with the file named
    broken = tmp_path / "broken"
    make_synthetic_voc(str(broken), n_images=4, size=(40, 50), seed=2)
    img = next((broken / "JPEGImages").glob("*.jpg"))
    img.write_bytes(img.read_bytes()[:150])
    assert main(["data", "check", str(broken), "--split", "train"]) == 1
    captured = capsys.readouterr()
    assert img.name in captured.out and "ERROR" in captured.out and "error(s)" in captured.err
    assert main(["data", "check", str(broken), "--split", "train", "--policy", "bad_image=skip", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["train"]["counts"]["corrupt_image"] == 1
    assert main(["data", "convert", str(voc), "--split", "val", "--to", "yolo", "--out", str(tmp_path / "y")]) == 0
    assert (tmp_path / "y" / "data.yaml").exists()
    assert main(["data", "check", str(tmp_path / "y" / "data.yaml"), "--level", "header"]) == 0
    assert main(["data", "check", str(tmp_path / "nothing_here")]) == 2
