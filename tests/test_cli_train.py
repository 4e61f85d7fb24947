"""``ssdkit train`` / ``ssdkit evaluate`` in-process: smoke runs, help, one-line errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_utils import make_tiny_voc, tiny_config, write_config

from ssdkit.cli.main import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A config file and a finished 1-epoch run, shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("cli")
    voc = make_tiny_voc(tmp / "voc")
    cfg = write_config(tmp / "tiny.yaml", tiny_config(voc, tmp / "runs", epochs=1, tensorboard=False))
    assert main(["train", str(cfg), "--quiet", "--name", "first"]) == 0
    return {"config": cfg, "run": tmp / "runs" / "first", "voc": voc, "tmp": tmp}


def test_train_smoke_prints_the_summary(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", str(trained["config"]), "--quiet", "--name", "second", "train.epochs=1", "eval.every=0",
               "train.plots=false"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "completed: 1 epoch(s), 3 iterations" in out and "run folder:" in out
    assert (trained["tmp"] / "runs" / "second" / "last.pt").is_file()


def test_resume_a_finished_run_with_more_epochs(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run = trained["tmp"] / "runs" / "resumed"
    shutil.copytree(trained["run"], run)
    rc = main(["train", "--resume", str(run / "last.pt"), "train.epochs=2", "--quiet"])
    assert rc == 0
    assert "completed: 2 epoch(s), 6 iterations" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "missing.yaml"], "config file not found: missing.yaml"),
        (["train"], "give a config file (ssdkit train CONFIG) or --resume CHECKPOINT"),
        (["train", "--resume", "nope/last.pt"], "checkpoint not found: nope/last.pt"),
        (["train", "{cfg}", "train.epochs=ten"], "train.epochs: expected an integer, got 'ten'"),
        (["train", "{cfg}", "model.name=ssd9000"], "model.name: unknown model 'ssd9000'"),
        (["train", "{cfg}", "model.scales=[0.1,0.2]"], "model.scales: "),
        (["train", "{cfg}", "train.bacth_size=2"], "train.bacth_size: unknown key (did you mean 'batch_size'?)"),
        (["train", "{cfg}", "train.epochs"], "expected key.path=value"),
        (["train", "{cfg}", "data.root=/nonexistent/voc"], "/nonexistent/voc"),
        (["evaluate", "nope.pt"], "checkpoint not found: nope.pt"),
        (["evaluate", "{run}/last.pt", "--split", "test"], "data.test: this split is not configured"),
        (["evaluate", "{run}/last.pt", "--data", "nope.yaml"], "config file not found: nope.yaml"),
        (["evaluate", "{run}/last.pt", "--conf", "2"], "--conf must be in [0, 1]"),
        (["evaluate", "{cfg}"], "tiny.yaml"),  # not a checkpoint: one line naming the file
    ],
)
def test_user_errors_are_one_line_exit_2(trained: dict[str, Path], args: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{cfg}", str(trained["config"])).replace("{run}", str(trained["run"])) for a in args]
    assert main([*argv, "--quiet"] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ssdkit {argv[0]}: error: ") and message in err[0], err


def test_resume_of_a_model_only_checkpoint_says_what_to_do(trained: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import ssdkit

    model = ssdkit.load(trained["run"] / "best.pt")
    ssdkit.save(tmp_path / "weights.pt", model)
    assert main(["train", str(trained["config"]), "--resume", str(tmp_path / "weights.pt"), "--quiet"]) == 2
    assert "model-only checkpoint; start a new run with model.checkpoint=" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "evaluate", "demo"])
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"ssdkit {command}" in out


def test_evaluate_writes_metrics_table_and_plots(trained: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "eval"
    rc = main(["evaluate", str(trained["run"] / "best.pt"), "--out", str(out_dir), "--draw", "2", "--score", "0.0"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "max recall" in text and "mAP (voc07) on 4 val images" in text and "error breakdown" in text
    m = json.loads((out_dir / "metrics.json").read_text())
    assert m["metric"] == "voc07" and m["n_images"] == 4 and m["split"] == "val"
    assert {r["class"] for r in m["per_class"]} == {"red", "green", "blue"}
    assert "error_breakdown" in m and (out_dir / "pr_curves.png").is_file()
    assert len(list((out_dir / "predictions").glob("*.png"))) == 2
    # another config file, another split and metric, overrides
    rc = main(["evaluate", str(trained["run"] / "best.pt"), "--data", str(trained["config"]), "--split", "train",
               "--metric", "coco", "--out", str(tmp_path / "coco"), f"data.root={trained['voc']}"])
    assert rc == 0
    assert json.loads((tmp_path / "coco" / "metrics.json").read_text())["n_images"] == 12
    # several metrics from one pass: the first gives the table, each is recomputed from the same detections
    capsys.readouterr()
    rc = main(["evaluate", str(trained["run"] / "best.pt"), "--metric", "all", "--out", str(tmp_path / "all")])
    assert rc == 0
    text = capsys.readouterr().out
    m_all = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert set(m_all["metrics"]) == {"voc07", "voc10", "coco"} and m_all["metrics"]["voc07"] == m["map"]
    assert set(m_all["metrics"]["coco"]) >= {"AP", "AP50"} and set(m_all["per_class_ap"]["voc10"]) == {
        "red", "green", "blue"}
    assert set(m_all["per_class_ap"]["coco"]) == {"red", "green", "blue"}
    assert "mAP (voc10)" in text and "COCO AP@[.5:.95]" in text
    with pytest.raises(SystemExit) as exc:  # argparse's usage error: exit status 2, one line
        main(["evaluate", str(trained["run"] / "best.pt"), "--metric", "voc07,map50"])
    assert exc.value.code == 2
    assert "unknown metric(s) ['map50']" in capsys.readouterr().err
