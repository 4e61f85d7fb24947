"""Parsing: exact counts on ../shared data, generated COCO / YOLO / CSV files, policies, fsspec URLs."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssdkit.data import COCODataset, CSVDataset, VOCDataset, YOLODataset
from ssdkit.errors import ConfigError, DataError

FAST = {"check_images": "none", "verbose": False}


# ------------------------------------------------------------------------------------ helpers
def _img(path: Path, h: int = 40, w: int = 60, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def _voc_xml(path: Path, objects: list[tuple], size: tuple[int, int] | None = (40, 60), filename: str = "") -> None:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult[, truncated]])."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    if size:
        s = ET.SubElement(root, "size")
        ET.SubElement(s, "height").text, ET.SubElement(s, "width").text = str(size[0]), str(size[1])
    for o in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = o[0]
        ET.SubElement(obj, "difficult").text = str(o[5] if len(o) > 5 else 0)
        ET.SubElement(obj, "truncated").text = str(o[6] if len(o) > 6 else 0)
        bb = ET.SubElement(obj, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), o[1:5]):
            ET.SubElement(bb, k).text = str(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path)


def make_voc(root: Path, images: dict[str, list[tuple]], sets: dict[str, list[str]] | None = None) -> Path:
    for iid, objs in images.items():
        _img(root / "JPEGImages" / f"{iid}.jpg")
        _voc_xml(root / "Annotations" / f"{iid}.xml", objs)
    for name, ids in (sets or {"all": list(images)}).items():
        p = root / "ImageSets" / "Main" / f"{name}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(i + "\n" for i in ids))
    return root


# ------------------------------------------------------------------------------------ BCCD / raccoon
def _count_xml(root: Path, ids: list[str]) -> tuple[Counter, int]:
    """Independent count: boxes per class from the XML text, minus zero-size boxes."""
    per = Counter()
    degenerate = 0
    for i in ids:
        tree = ET.parse(root / "Annotations" / f"{i}.xml")
        for obj in tree.getroot().iter("object"):
            b = [float(obj.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
            if b[2] <= b[0] or b[3] <= b[1]:
                degenerate += 1
                continue
            per[obj.find("name").text] += 1
    return per, degenerate


@pytest.mark.shared
@pytest.mark.parametrize("split,n_images", [("train", 205), ("val", 87), ("trainval", 292)])
def test_bccd_counts_match_the_xml(bccd_root: Path, split: str, n_images: int) -> None:
    ids = (bccd_root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    expected, degenerate = _count_xml(bccd_root, ids)
    ds = VOCDataset(bccd_root, split, **FAST)
    assert len(ds) == n_images == len(ids)
    assert ds.classes == ["Platelets", "RBC", "WBC"]
    assert ds.report.boxes_per_class == dict(expected)
    assert ds.report.count("degenerate", "removed") == degenerate
    labels = np.concatenate([r.labels for r in ds.records])
    assert dict(Counter(ds.classes[k - 1] for k in labels)) == dict(expected)


@pytest.mark.shared
def test_bccd_degenerate_boxes_are_removed_and_named(bccd_root: Path) -> None:
    ds = VOCDataset(bccd_root, "trainval", **FAST)
    probs = [p for p in ds.report.problems if p.kind == "degenerate"]
    assert sorted(Path(p.file).name for p in probs) == ["BloodImage_00338.xml", "BloodImage_00343.xml"]
    assert all(p.where.startswith("object ") and p.action == "removed" for p in probs)
    with pytest.raises(DataError, match=r"BloodImage_00338.xml, object 12"):
        VOCDataset(bccd_root, "trainval", policy={"degenerate": "error"}, **FAST)


@pytest.mark.shared
def test_bccd_item_contract(bccd_root: Path) -> None:
    ds = VOCDataset(bccd_root, "val", verbose=False)
    img, t = ds[0]
    assert img.dtype.is_floating_point is False and img.shape == (3, 480, 640)
    assert t["boxes"].dtype.is_floating_point and t["boxes"].shape[1] == 4
    assert t["labels"].min() >= 1 and t["labels"].max() <= 3
    assert t["difficult"].dtype == __import__("torch").bool
    assert t["image_id"] == ds.image_ids[0] and t["orig_size"] == (480, 640)
    assert t["inverse"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert ds.report.sizes[0] == (480, 640)


@pytest.mark.shared
def test_raccoon_csv_and_xml_give_the_same_boxes(raccoon_root: Path) -> None:
    csv_ds = CSVDataset(raccoon_root / "images", raccoon_root / "data" / "raccoon_labels.csv", **FAST)
    xml_ds = VOCDataset(raccoon_root, images_dir="images", annotations_dir="annotations", **FAST)
    assert len(csv_ds) == len(xml_ds) == 200
    assert csv_ds.classes == xml_ds.classes == ["raccoon"]
    by_id = {r.image_id: r for r in csv_ds.records}
    for r in xml_ds.records:
        a = by_id[r.image_id]
        np.testing.assert_array_equal(a.boxes[np.lexsort(a.boxes.T)], r.boxes[np.lexsort(r.boxes.T)])
    n_train = len(CSVDataset(raccoon_root / "images", raccoon_root / "data" / "train_labels.csv", **FAST))
    n_test = len(CSVDataset(raccoon_root / "images", raccoon_root / "data" / "test_labels.csv", **FAST))
    assert (n_train, n_test) == (160, 40)


# ------------------------------------------------------------------------------------ VOC options
def test_voc_options_background_include_exclude(tmp_path: Path) -> None:
    root = make_voc(tmp_path, {
        "a": [("cat", 1, 1, 10, 10), ("dog", 5, 5, 20, 20, 1), ("bird", 2, 2, 8, 8, 0, 1)],
        "b": [("dog", 3, 3, 30, 30, 0, 1)],
    })
    ds = VOCDataset(root, "all", classes=["background", "bird", "cat", "dog"], **FAST)
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.report.boxes_per_class == {"bird": 1, "cat": 1, "dog": 2}
    assert ds.report.difficult_per_class == {"bird": 0, "cat": 0, "dog": 1}
    assert ds.records[0].difficult.tolist() == [False, True, False]
    ds = VOCDataset(root, "all", exclude_difficult=True, exclude_truncated=True, **FAST)
    assert ds.report.n_boxes == 1 and ds.report.count("excluded") == 3
    ds = VOCDataset(root, "all", classes=["background", "bird", "cat", "dog"], include_classes=[3], **FAST)
    assert ds.classes == ["dog"] and ds.report.n_boxes == 2 and ds.report.count("excluded") == 2
    ds = VOCDataset(root, "all", include_classes=["cat", "bird"], **FAST)
    assert ds.classes == ["bird", "cat"] and len(ds) == 2  # image b kept without boxes
    assert ds.report.count("no_boxes", "kept") == 1
    ds = VOCDataset(root, ids=["b"], **FAST)
    assert ds.image_ids == ["b"]


def test_voc_inverted_box_unknown_class_and_out_of_image(tmp_path: Path) -> None:
    root = make_voc(tmp_path, {
        "a": [("cat", 30, 5, 10, 20), ("cat", 1, 1, 10, 10), ("cat", 50, 30, 70, 45), ("cat", 100, 100, 120, 120)],
        "b": [("zebra", 1, 1, 5, 5)],
    })
    with pytest.raises(DataError, match=r"b\.xml, object 0: class 'zebra'"):
        VOCDataset(root, "all", classes=["cat"], **FAST)
    ds = VOCDataset(root, "all", classes=["cat"], policy={"unknown_class": "skip"}, **FAST)
    assert ds.report.count("unknown_class", "removed") == 1
    inv = [p for p in ds.report.problems if p.kind == "degenerate"]
    assert len(inv) == 1 and "inverted" in inv[0].message and inv[0].where == "object 0"
    # object 2 sticks out of the 60x40 image: clipped; object 3 is entirely outside: dropped
    np.testing.assert_array_equal(ds.records[0].boxes, [[1, 1, 10, 10], [50, 30, 60, 40]])
    assert ds.report.count("out_of_image", "clipped") == 1 and ds.report.count("outside_image", "removed") == 1
    ds = VOCDataset(root, "all", classes=["cat"], policy={"unknown_class": "skip", "out_of_image": "drop"}, **FAST)
    assert len(ds.records[0].boxes) == 1
    with pytest.raises(DataError, match="extends outside"):
        VOCDataset(root, "all", classes=["cat"], policy={"unknown_class": "skip", "out_of_image": "error"}, **FAST)
    ds = VOCDataset(root, "all", classes=["cat"], policy={"unknown_class": "skip", "keep_images_without_gt": False},
                    **FAST)
    assert ds.image_ids == ["a"] and ds.report.count("no_boxes", "dropped image") == 1


def test_voc_malformed_and_missing_xml_duplicates(tmp_path: Path) -> None:
    root = make_voc(tmp_path, {"a": [("cat", 1, 1, 10, 10)], "b": [("cat", 1, 1, 10, 10)]},
                    sets={"all": ["a", "b", "a", "c"]})
    (root / "Annotations" / "b.xml").write_text("<annotation><object>")
    with pytest.raises(DataError) as ei:
        VOCDataset(root, "all", **FAST)
    assert "b.xml" in str(ei.value) and "c.xml" in str(ei.value)
    ds = VOCDataset(root, "all", policy={"bad_image": "skip"}, **FAST)
    assert ds.image_ids == ["a"]
    assert ds.report.count("bad_annotation") == 1 and ds.report.count("missing_annotation") == 1
    assert ds.report.count("duplicate_id", "dropped image") == 1


def test_voc_float_coordinates_kept_as_written(tmp_path: Path) -> None:
    root = make_voc(tmp_path, {"a": [("cat", 1.5, 2.25, 10.75, 20.5)]})
    ds = VOCDataset(root, "all", **FAST)
    np.testing.assert_array_equal(ds.records[0].boxes, [[1.5, 2.25, 10.75, 20.5]])


# ------------------------------------------------------------------------------------ CSV
def test_csv_keras_order_with_and_without_header(tmp_path: Path) -> None:
    for n in ("a.jpg", "b.jpg"):
        _img(tmp_path / n)
    rows = ["a.jpg,1,10,2,20,1", "a.jpg,5,15,6,16,2", "b.jpg,3,30,4,35,2"]
    fmt = ["image_name", "xmin", "xmax", "ymin", "ymax", "class_id"]
    (tmp_path / "h.csv").write_text("frame,xmin,xmax,ymin,ymax,class_id\n" + "\n".join(rows) + "\n")
    (tmp_path / "n.csv").write_text("\n".join(rows) + "\n")
    for name in ("h.csv", "n.csv"):
        ds = CSVDataset(tmp_path, tmp_path / name, input_format=fmt, **FAST)
        assert ds.report.n_boxes == 3, name  # the headerless file keeps its first row
        assert ds.classes == ["1", "2"]
        np.testing.assert_array_equal(ds.records[0].boxes, [[1, 2, 10, 20], [5, 6, 15, 16]])
    ds = CSVDataset(tmp_path, tmp_path / "h.csv", **FAST)  # header names suffice
    assert ds.report.n_boxes == 3
    ds = CSVDataset(tmp_path, tmp_path / "h.csv", classes=["background", "car", "truck"], **FAST)
    assert ds.report.boxes_per_class == {"car": 1, "truck": 2}


def test_csv_wrong_column_order_missing_column_and_lines(tmp_path: Path) -> None:
    _img(tmp_path / "a.jpg")
    (tmp_path / "l.csv").write_text("filename,xmin,ymin,xmax,ymax,class\na.jpg,1,2,10,20,cat\n")
    with pytest.raises(DataError, match="column order is probably wrong"):
        CSVDataset(tmp_path, tmp_path / "l.csv",
                   input_format=["image_name", "xmin", "xmax", "ymin", "ymax", "class_id"], **FAST)
    (tmp_path / "m.csv").write_text("filename,xmin,ymin,xmax,class\na.jpg,1,2,10,cat\n")
    with pytest.raises(DataError, match=r"m\.csv: missing column\(s\) ymax"):
        CSVDataset(tmp_path, tmp_path / "m.csv", **FAST)
    (tmp_path / "u.csv").write_text("filename,xmin,ymin,xmax,ymax,class\na.jpg,1,2,10,20,cat\na.jpg,1,2,10,20,emu\n"
                                    "a.jpg,x,2,10,20,cat\n")
    with pytest.raises(DataError, match=r"u\.csv, line 3: class 'emu'"):
        CSVDataset(tmp_path, tmp_path / "u.csv", classes=["cat"], **FAST)
    ds = CSVDataset(tmp_path, tmp_path / "u.csv", classes=["cat"], policy={"unknown_class": "skip"}, **FAST)
    bad = [p for p in ds.report.problems if p.kind == "invalid_box"]
    assert bad[0].where == "line 4"
    with pytest.raises(ConfigError, match="input_format"):
        CSVDataset(tmp_path, tmp_path / "l.csv", input_format=["image_name", "xmin", "xmax"], **FAST)


def test_csv_semicolons_sizes_and_negative_rows(tmp_path: Path) -> None:
    _img(tmp_path / "a.jpg")
    _img(tmp_path / "b.jpg")
    (tmp_path / "s.csv").write_text("filename;width;height;class;xmin;ymin;xmax;ymax\n"
                                    "a.jpg;60;40;cat;1;2;70;20\nb.jpg;60;40;;;;;\n")
    ds = CSVDataset(tmp_path, tmp_path / "s.csv", **FAST)
    assert len(ds) == 2 and ds.records[0].size == (40, 60)
    np.testing.assert_array_equal(ds.records[0].boxes, [[1, 2, 60, 20]])  # clipped against the CSV size
    assert len(ds.records[1].labels) == 0


# ------------------------------------------------------------------------------------ COCO
def _coco(tmp_path: Path) -> Path:
    for i in (1, 2, 3):
        _img(tmp_path / "imgs" / f"{i}.jpg", 50, 80)
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 80, "height": 50} for i in (1, 2, 3)],
        "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 18, "bbox": [10, 5, 20, 15], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 80, 50], "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [1.5, 2.5, 3, 4]},
            {"id": 4, "image_id": 2, "category_id": 90, "bbox": [5, 5, 0, 4]},
            {"id": 5, "image_id": 7, "category_id": 3, "bbox": [5, 5, 4, 4]},
            {"id": 6, "image_id": 2, "category_id": 18, "bbox": [5, 5, 4, 4], "difficult": 1},
        ],
    }
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(data))
    return p


def test_coco_remap_crowd_orphan_degenerate(tmp_path: Path) -> None:
    ds = COCODataset(tmp_path / "imgs", _coco(tmp_path), **FAST)
    assert ds.classes == ["car", "dog", "toothbrush"]
    assert ds.cat_id_to_label == {3: 1, 18: 2, 90: 3} and ds.label_to_cat_id == {1: 3, 2: 18, 3: 90}
    assert ds.image_ids == ["1", "2", "3"] and ds.coco_image_ids == [1, 2, 3]
    np.testing.assert_array_equal(ds.records[0].boxes, [[10, 5, 30, 20]])  # xywh -> xyxy; crowd dropped
    np.testing.assert_allclose(ds.records[1].boxes, [[1.5, 2.5, 4.5, 6.5], [5, 5, 9, 9]])
    assert ds.records[1].difficult.tolist() == [False, True]
    rep = ds.report
    assert rep.count("excluded") == 1 and rep.count("orphan_annotation") == 1
    deg = [p for p in rep.problems if p.kind == "degenerate"]
    assert deg[0].where == "annotation id 4"
    ds = COCODataset(tmp_path / "imgs", tmp_path / "ann.json", policy={"crowd": "difficult"}, **FAST)
    assert ds.records[0].difficult.tolist() == [False, True]
    ds = COCODataset(tmp_path / "imgs", tmp_path / "ann.json", classes=["dog"], **FAST)
    assert ds.classes == ["dog"] and ds.cat_id_to_label == {18: 1} and ds.report.n_boxes == 2


def test_coco_bad_json(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        COCODataset(tmp_path, tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"annotations": []}')
    with pytest.raises(DataError, match="'images'"):
        COCODataset(tmp_path, tmp_path / "y.json")


# ------------------------------------------------------------------------------------ YOLO
def test_yolo_yaml_labels_polygons_and_missing_labels(tmp_path: Path) -> None:
    d = tmp_path / "ds"
    for split, names in (("train", ["a", "b", "c"]), ("val", ["d"])):
        for n in names:
            _img(d / "images" / split / f"{n}.jpg", 100, 200)
    (d / "labels" / "train").mkdir(parents=True)
    (d / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.25 0.25 0.1 0.1\n")
    (d / "labels" / "train" / "b.txt").write_text("1 0.1 0.1 0.3 0.1 0.3 0.5\n\n")  # polygon
    (d / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: person\n  1: car\n")
    ds = YOLODataset(d / "data.yaml", "train", verbose=False)
    assert ds.classes == ["person", "car"] and ds.image_ids == ["a", "b", "c"]
    np.testing.assert_allclose(ds.annotation(0)["boxes"].numpy(), [[80, 30, 120, 70], [40, 20, 60, 30]], atol=1e-4)
    np.testing.assert_allclose(ds.annotation(1)["boxes"].numpy(), [[20, 10, 60, 50]], atol=1e-4)
    assert ds.report.count("no_label_file") == 1
    _image, t = ds[0]
    assert t["labels"].tolist() == [1, 2]
    val = YOLODataset(d / "data.yaml", "val", check_images="none", verbose=False)
    assert len(val) == 1
    _image, t = val[0]  # size unknown at build: boxes converted at load
    assert t["boxes"].shape == (0, 4)
    (d / "labels" / "train" / "c.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"c\.txt, line 1: class '<class id 5>'"):
        YOLODataset(d / "data.yaml", "train", verbose=False)


# ------------------------------------------------------------------------------------ fsspec
def test_memory_urls_for_images_and_annotations(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    base = "memory://ssdkit-test-voc"
    _ok, jpg = cv2.imencode(".jpg", np.full((40, 60, 3), 90, np.uint8))
    fs.pipe(f"{base}/JPEGImages/x.jpg", jpg.tobytes())
    _voc_xml(tmp_path / "x.xml", [("cat", 1, 1, 10, 10)])
    fs.pipe(f"{base}/Annotations/x.xml", (tmp_path / "x.xml").read_bytes())
    fs.pipe(f"{base}/ImageSets/Main/train.txt", b"x\n")
    ds = VOCDataset(base, "train", verbose=False)
    img, t = ds[0]
    assert img.shape == (3, 40, 60) and t["boxes"].tolist() == [[1, 1, 10, 10]]
    assert ds.report.sizes == [(40, 60)]
    fs.pipe(f"{base}/labels.csv", b"filename,xmin,ymin,xmax,ymax,class\nx.jpg,1,1,10,10,cat\n")
    ds = CSVDataset(f"{base}/JPEGImages", f"{base}/labels.csv", check_images="exists", verbose=False)
    assert ds[0][0].shape == (3, 40, 60)
    ds = CSVDataset(f"file://{tmp_path}", f"{base}/labels.csv", check_images="exists", verbose=False,
                    policy={"bad_image": "skip"})
    assert len(ds) == 0 and ds.report.count("missing_image") == 1


def test_missing_cloud_backend_says_what_to_install() -> None:
    import importlib.util

    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed")
    with pytest.raises(DataError, match=r"pip install ssdkit\[s3\]"):
        VOCDataset("s3://bucket/voc", "train")


def test_report_format_mentions_everything(tmp_path: Path) -> None:
    root = make_voc(tmp_path, {"a": [("cat", 30, 5, 10, 20), ("cat", 1, 1, 10, 10)]})
    ds = VOCDataset(root, "all", verbose=False)
    text = ds.report.format()
    assert "images: 1" in text and "cat" in text and "degenerate" in text and "a.xml, object 0" in text
    assert "image size (HxW): min 40x60" in text
    assert ds.report.summary_line().startswith(ds.name)
    assert os.fspath(root) in repr(ds.report.problems[0].file)
