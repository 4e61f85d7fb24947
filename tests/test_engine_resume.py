"""Exact resume: a run killed mid-epoch continues with the uninterrupted run's per-iteration losses."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest
import torch
from engine_utils import make_tiny_voc, run_python, tiny_config, write_config

from ssdkit.checkpoint import load_checkpoint
from ssdkit.engine.logging import read_csv
from ssdkit.engine.sampler import EpochSampler
from ssdkit.engine.trainer import Trainer, train


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_voc(tmp_path_factory.mktemp("voc"))


class _Crash(Exception):
    pass


class CrashAfterCheckpoint:
    """Raises right after the checkpoint written at ``iteration`` (a simulated crash)."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        if trainer.iteration == self.iteration:
            raise _Crash


def _loss_rows(run_dir: Path) -> list[tuple[int, float, float, float]]:
    return [(r["iteration"], r["loss"], r["cls_loss"], r["box_loss"]) for r in read_csv(run_dir / "iterations.csv")]


def test_simulated_crash_mid_epoch_resumes_exactly(voc: Path, tmp_path: Path) -> None:
    over = ["train.epochs=3", "train.checkpoint_every_iters=2", "train.plots=false", "train.tensorboard=false",
            "optimizer.name=sgd", "optimizer.lr=0.01", "schedule.name=multistep", "schedule.milestones=[2]"]
    full = train(tiny_config(voc, tmp_path, name="full"), over)
    crashed = Trainer(tiny_config(voc, tmp_path, name="crash"), over, callbacks=[CrashAfterCheckpoint(5)])
    with pytest.raises(_Crash):
        crashed.fit()
    ck = load_checkpoint(crashed.run_dir / "last.pt")
    assert (ck["epoch"], ck["iter_in_epoch"], ck["iteration"]) == (1, 2, 5)  # mid-epoch 2
    resumed = train(resume=crashed.run_dir / "last.pt")
    assert resumed.run_dir == crashed.run_dir and resumed.iteration == full.iteration == 9
    assert [x[0] for x in resumed.losses] == [6, 7, 8, 9]
    assert resumed.losses == full.losses[5:]  # bit-identical continuation
    assert _loss_rows(resumed.run_dir) == _loss_rows(full.run_dir)
    a, b = read_csv(full.run_dir / "results.csv"), read_csv(resumed.run_dir / "results.csv")
    for ra, rb in zip(a, b, strict=True):
        assert {k: ra[k] for k in ("epoch", "iteration", "lr", "loss", "val_loss", "map")} == \
               {k: rb[k] for k in ("epoch", "iteration", "lr", "loss", "val_loss", "map")}
    fa, fb = load_checkpoint(full.run_dir / "last.pt"), load_checkpoint(resumed.run_dir / "last.pt")
    assert all(torch.equal(fa["state_dict"][k], fb["state_dict"][k]) for k in fa["state_dict"])


KILLER = textwrap.dedent("""
    import os, signal, sys
    import ssdkit
    from ssdkit.engine.trainer import Trainer

    class Kill:
        def on_checkpoint(self, trainer, path):
            if trainer.iteration == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)

    Trainer(sys.argv[1], callbacks=[Kill()]).fit()
""")


def test_sigkill_mid_epoch_then_resume_continues_the_loss_curve(voc: Path, tmp_path: Path) -> None:
    base = tiny_config(voc, tmp_path, epochs=2, checkpoint_every_iters=1, plots=False, tensorboard=False)
    write_config(tmp_path / "full.yaml", {**base, "name": "full"})
    write_config(tmp_path / "killed.yaml", {**base, "name": "killed"})
    (tmp_path / "killer.py").write_text(KILLER)

    full = train({**base, "name": "full"})  # uninterrupted reference, in this process (one thread too)
    killed = run_python(["killer.py", "killed.yaml", "4"], tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = tmp_path / "killed"
    assert load_checkpoint(run_dir / "last.pt")["iter_in_epoch"] == 1  # killed inside epoch 2
    resumed = run_python(["-m", "ssdkit.cli.main", "train", "--resume", str(run_dir / "last.pt"), "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "completed: 2 epoch(s), 6 iterations" in resumed.stdout
    assert _loss_rows(run_dir) == _loss_rows(full.run_dir)
    assert [r["epoch"] for r in read_csv(run_dir / "results.csv")] == [1, 2]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_skip_then_shard_equals_the_uninterrupted_shards(world: int) -> None:
    n, batch = 23, 2
    for rank in range(world):
        full = EpochSampler(n, shuffle=True, seed=5, rank=rank, world_size=world)
        full.set_epoch(3)
        order = list(full)
        assert len(order) == len(full) == full.total_per_rank()
        for done in range(0, len(order) // batch + 1):
            s = EpochSampler(n, shuffle=True, seed=5, rank=rank, world_size=world)
            s.resume_at(3, done * batch * world)
            s.set_epoch(3)
            assert list(s) == order[done * batch:] and len(s) == len(order) - done * batch
            s.set_epoch(4)  # the skip applies to its epoch only
            assert len(list(s)) == full.total_per_rank()
    shards = []
    for rank in range(world):
        s = EpochSampler(n, shuffle=False, rank=rank, world_size=world, pad=False)
        shards += list(s)
    assert sorted(shards) == list(range(n))


def test_sigterm_saves_a_mid_epoch_checkpoint_and_resumes_exactly(voc: Path, tmp_path: Path) -> None:
    import os

    class Term:
        def on_iteration_end(self, trainer: Trainer, info: dict) -> None:
            if info["iteration"] == 4:
                os.kill(os.getpid(), signal.SIGTERM)

    base = tiny_config(voc, tmp_path, epochs=2, plots=False, tensorboard=False)
    full = train({**base, "name": "ref"})
    res = Trainer({**base, "name": "term"}, callbacks=[Term()]).fit()
    assert res.stop_reason == "interrupted" and res.iteration == 4
    assert load_checkpoint(res.run_dir / "last.pt")["iter_in_epoch"] == 1
    resumed = train(resume=res.run_dir / "last.pt")
    assert resumed.losses == full.losses[4:]
