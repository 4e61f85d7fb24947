"""DistributedDataParallel on CPU: 2 gloo processes under torchrun, rank 0 writes the artefacts."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from engine_utils import make_tiny_voc, run_python, tiny_config, write_config

from ssdkit.checkpoint import load_checkpoint
from ssdkit.engine.logging import read_csv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_two_gloo_processes(tmp_path: Path) -> None:
    voc = make_tiny_voc(tmp_path / "voc")
    cfg = tiny_config(voc, tmp_path / "runs", name="ddp", epochs=2, batch_size=2, tensorboard=False,
                      checkpoint_template="ddp_{epoch:02d}.pt")
    cfg["train"]["sync_bn"] = True
    cfg["train"]["freeze_stride"] = 2  # frozen layers under DDP: no gradient to reduce, BN kept in eval mode
    write_config(tmp_path / "ddp.yaml", cfg)
    from ssdkit.models import build_model

    torch.manual_seed(0)  # the trainer seeds the model init with train.seed=0 the same way
    init = build_model("toy_ssd", n_classes=3, image_size=64, width=4).state_dict()
    proc = run_python(["-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                       "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
                       "-m", "ssdkit.cli.main", "train", "ddp.yaml", "--quiet"], tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "completed: 2 epoch(s), 6 iterations" in proc.stdout  # 12 images / (2 ranks x 2) = 3 per epoch
    assert proc.stdout.count("run folder:") == 1  # only rank 0 reports
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["ddp"]  # rank 1 did not create a second run folder
    rd = tmp_path / "runs" / "ddp"
    for name in ("config.yaml", "last.pt", "best.pt", "ddp_01.pt", "ddp_02.pt", "results.csv", "iterations.csv",
                 "loss.png", "map.png", "pr_curves.png", "val_predictions.png", "metrics.json"):
        assert (rd / name).is_file(), name
    rows = read_csv(rd / "results.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["map"] is not None for r in rows)
    ck = load_checkpoint(rd / "last.pt")
    assert ck["world_size"] == 2 and ck["iteration"] == 6
    assert not any(k.startswith("module.") for k in ck["state_dict"])
    frozen = [k for k in ck["state_dict"] if k.startswith("backbone.block1_conv")]
    assert frozen and all(torch.equal(ck["state_dict"][k], init[k]) for k in frozen)
    assert not torch.equal(ck["state_dict"]["backbone.block2_conv1.weight"], init["backbone.block2_conv1.weight"])
    final = json.loads((rd / "metrics.json").read_text())["final"]
    assert final["n_images"] == 4  # the 4 validation images, sharded over 2 ranks and gathered once each


@pytest.mark.parametrize("n", [4, 5])
def test_eval_shards_cover_the_dataset_once(n: int) -> None:
    from ssdkit.engine.sampler import EpochSampler

    got = [i for r in range(2) for i in EpochSampler(n, shuffle=False, rank=r, world_size=2, pad=False)]
    assert sorted(got) == list(range(n))
