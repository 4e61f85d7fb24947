"""`ssdkit anchors analyze|fit` on BCCD (../shared) and on broken input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ssdkit.cli.main import main


def _config(tmp_path: Path, root: Path) -> Path:
    cfg = {
        "name": "anchors_test",  # a comment-free header line
        "model": {"name": "ssdlite320_mobilenet_v2"},
        "data": {"format": "voc", "root": str(root), "train": {"image_set": "train"}},
    }
    p = tmp_path / "cfg.yaml"
    p.write_text("# BCCD anchors\n" + yaml.safe_dump(cfg, sort_keys=False) + "\n# trailing comment\n")
    return p


def test_analyze_bccd_reports_platelets_poorly_covered(tmp_path: Path, bccd_root: Path, capsys) -> None:
    cfg = _config(tmp_path, bccd_root)
    assert main(["anchors", "analyze", "--data", str(cfg), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "Platelets" in out and "anchor coverage of 2804 boxes" in out
    rep = json.loads((tmp_path / "out" / "coverage.json").read_text())["before"]
    assert rep["n_boxes"] == 2804
    assert rep["by_class"]["Platelets"]["frac_pos"] < 0.05 < rep["by_class"]["RBC"]["frac_pos"]
    assert (tmp_path / "out" / "anchor_coverage.png").stat().st_size > 10_000


def test_fit_writes_scales_and_keeps_comments(tmp_path: Path, bccd_root: Path, capsys) -> None:
    cfg = _config(tmp_path, bccd_root)
    assert main(["anchors", "fit", "--data", str(cfg), "--out", str(tmp_path / "out"), "--write"]) == 0
    out = capsys.readouterr().out
    assert "paste into your config" in out
    rep = json.loads((tmp_path / "out" / "coverage.json").read_text())
    assert rep["after"]["frac_pos"] > rep["before"]["frac_pos"]
    text = cfg.read_text()
    assert text.startswith("# BCCD anchors") and "# trailing comment" in text
    written = yaml.safe_load(text)
    assert written["model"]["scales"] == pytest.approx(rep["scales"], abs=1e-5)
    assert written["model"]["name"] == "ssdlite320_mobilenet_v2"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--data", "missing.yaml"], "config file not found"),
        (["--data", "CFG", "--model", "ssd9000"], "ssd9000"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, argv: list[str], match: str, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"format": "voc", "root": str(tmp_path), "train": {"image_set": "x"}}}))
    argv = [str(cfg) if a == "CFG" else a for a in argv]
    assert main(["anchors", "analyze", *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
