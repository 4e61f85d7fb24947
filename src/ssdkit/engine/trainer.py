"""The training loop: :class:`Trainer` and :func:`train` (plain PyTorch).

::

    import ssdkit
    result = ssdkit.train("configs/demo.yaml", ["train.epochs=5"])        # -> TrainResult
    result = ssdkit.train(resume="runs/demo/last.pt")                      # continue a run
    model = ssdkit.load(result.best)

What a run does (rank 0 writes everything; see ``docs/training.md``):

1. Config: loaded and validated (:mod:`ssdkit.engine.config`), saved resolved as ``config.yaml``
   in the run folder ``train.out_dir/name`` (``name-2``, ``name-3``... when it holds another run,
   unless ``train.exist_ok``) and into every checkpoint.
2. Model first (impossible model values fail before any data is read; builder errors name the
   ``model.<key>``), then datasets and loaders (``data:``, ``augment:``), the encoder
   ``model.make_encoder(**encoder)``, ``MultiBoxLoss(**loss)``, optimizer and schedule.
3. Each epoch: a progress bar; per iteration the loss parts (reduced over ranks) are checked for
   NaN/inf, logged to ``iterations.csv``/TensorBoard every ``train.log_every`` iterations; every
   ``eval.every`` epochs (and at the last) a validation (mAP and val_loss); ``results.csv`` row;
   ``last.pt``; ``best.pt`` by ``train.keep_best_by``; template-named checkpoints; early
   stopping; time limit.
4. At the end: ``loss.png``, ``map.png``, ``pr_curves.png``, ``val_predictions.png``, ``metrics.json``.

Exact resume: a checkpoint holds model, optimizer, schedule, GradScaler, epoch, iteration and the
position inside the epoch, the running loss sums, the RNG states and the best/early-stop state.
Shuffling and augmentation are functions of ``(seed, epoch, index)``, so a resumed run (same
world size, ``workers`` irrelevant) sees exactly the batches the uninterrupted run would have seen,
and with a fixed seed its per-iteration losses are the same.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, SSDKitError
from .config import dump_config, load_config
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_object, cleanup, env_world_size, init_distributed
from .evaluator import EvalOutput, evaluate, make_eval_loader
from .freeze import freeze_modules, keep_frozen_in_eval, modules_up_to_stride
from .logging import ProgressBar, RunLogger, read_csv
from .sampler import EpochSampler
from .schedule import LRSchedule, build_schedule
from .seed import capture_rng_state, restore_rng_state, seed_everything

__all__ = ["Trainer", "TrainResult", "train", "NonFiniteLossError", "build_model_from_config", "build_optimizer",
           "select_device", "resolve_amp", "read_checkpoint", "TEMPLATE_FIELDS"]

log = logging.getLogger("ssdkit.engine")

#: names usable in ``train.checkpoint_template``
TEMPLATE_FIELDS = ("epoch", "iteration", "loss", "cls_loss", "box_loss", "val_loss", "map")


class NonFiniteLossError(SSDKitError):
    """Training stopped on a NaN/inf loss; ``checkpoint`` is the last good checkpoint (or ``None``)."""

    def __init__(self, message: str, epoch: int, iteration: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.iteration = iteration
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run folder.
        last, best: paths of ``last.pt`` and ``best.pt`` (``None`` if not written).
        epochs_completed: epochs finished (including those before a resume).
        iteration: global iterations done.
        stop_reason: ``'completed'``, ``'early_stop'``, ``'time_limit'``, ``'interrupted'`` or ``'nan'``.
        best_metric, best_value, best_epoch: the ``train.keep_best_by`` metric and its best value.
        metrics: the final evaluation (``EvalOutput.to_dict()``) or ``{}``.
        history: ``results.csv`` rows (the whole run, across resumes).
        losses: per-iteration training losses of this process (``[(iteration, loss, cls, box)]``).
        train_time_s: training wall time across resumes.
    """

    run_dir: Path
    last: Path | None
    best: Path | None
    epochs_completed: int
    iteration: int
    stop_reason: str
    best_metric: str
    best_value: float | None
    best_epoch: int | None
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[tuple[int, float, float, float]] = field(default_factory=list)
    train_time_s: float = 0.0

    @property
    def map(self) -> float | None:
        """Final validation mAP (``None`` without validation)."""
        v = self.metrics.get("map")
        return None if v is None else float(v)


# ---------------------------------------------------------------------------------------------- helpers
def select_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``'auto'`` -> ``cuda:<local_rank>`` if available, else ``mps``, else ``cpu``; or the device named."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"train.device: {spec!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {spec!r} requested but CUDA is not available; use train.device=cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif dev.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"train.device: {spec!r} requested but MPS is not available")
    return dev


def resolve_amp(amp: bool | str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)`` for ``train.amp`` on ``device``.

    CPU: ``true``/``bf16`` -> bfloat16 (``fp16`` is refused). CUDA: ``true`` -> bfloat16 where supported,
    else float16; ``fp16`` -> float16 with a GradScaler; ``bf16`` -> bfloat16.
    """
    if amp is False or amp is None:
        return None, False
    if device.type == "cpu":
        if amp == "fp16":
            raise ConfigError("train.amp: fp16 autocast needs a CUDA device; use train.amp=bf16 on CPU")
        return torch.bfloat16, False
    if device.type == "cuda":
        if amp == "fp16" or (amp is True and not torch.cuda.is_bf16_supported()):
            return torch.float16, True
        return torch.bfloat16, False
    raise ConfigError(f"train.amp: not supported on {device.type}; use train.amp=false")


_KEY_RE = r"(?<![\w.]){}(?!\w)"


def section_error(section: str, keys: Sequence[str], exc: Exception) -> ConfigError:
    """A builder error rewritten to name ``section.<key>`` (the first key of ``keys`` it mentions)."""
    msg = str(exc).strip()
    m = re.search(r"unknown option\(s\) \[([^\]]*)\]", msg)
    if m:
        first = m.group(1).split(",")[0].strip().strip("'\"")
        return ConfigError(f"{section}.{first}: {msg}")
    if msg.startswith("unknown model"):
        return ConfigError(f"{section}.name: {msg}")
    for key in sorted(keys, key=len, reverse=True):
        if re.search(_KEY_RE.format(re.escape(key)), msg):
            return ConfigError(f"{section}.{key}: {msg}")
    return ConfigError(f"{section}: {msg}")


def build_model_from_config(model_cfg: Mapping[str, Any], class_names: Sequence[str] | None,
                            dry_run: bool = False) -> nn.Module:
    """``build_model(**model section)`` with ``class_names``; errors name ``model.<key>``.

    ``dry_run``: validate the architecture only (no pretrained weights, no weight init when the
    registry allows it), with one placeholder class when ``class_names`` is ``None``.
    ``model.checkpoint`` (an ssdkit checkpoint) loads matching weights (:func:`ssdkit.checkpoint.load_weights`).
    """
    from ..models import build_model

    cfg = dict(model_cfg)
    name = cfg.pop("name")
    ckpt = cfg.pop("checkpoint", None)
    keys = [k for k in model_cfg if k != "name"]
    kwargs: dict[str, Any] = {k: v for k, v in cfg.items() if v is not None or k not in ("image_size",
                                                                                         "backbone_weights")}
    if class_names is not None:
        kwargs["class_names"] = list(class_names)
        n_classes: int | None = len(class_names)
    else:
        n_classes = 1
    try:
        if dry_run:
            kwargs.pop("backbone_weights", None)
            builder: Callable[..., Any] = build_model
            with contextlib.suppress(ImportError):
                from ..models.registry import build_uninitialized

                builder = build_uninitialized
            model = builder(name, n_classes=n_classes, **kwargs)
        else:
            model = build_model(name, n_classes=n_classes, **kwargs)
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as exc:
        if isinstance(exc, FileNotFoundError) and "backbone_weights" not in str(exc):
            raise ConfigError(f"model.backbone_weights: {exc}") from None
        raise section_error("model", keys, exc) from None
    if ckpt and not dry_run:
        from ..checkpoint import load_weights

        report = load_weights(model, ckpt, verbose=False)
        log.info("model.checkpoint %s: %s", ckpt, report.summary())
    return model


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`ssdkit.checkpoint.load_checkpoint`, with any failure to read the file as a
    :class:`~ssdkit.errors.CheckpointError` (some foreign files, e.g. text, raise other errors there)."""
    from ..checkpoint import load_checkpoint

    try:
        return load_checkpoint(path)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint file ({type(exc).__name__} while reading it); "
                              "give an ssdkit checkpoint such as runs/<name>/last.pt") from None


def _is_no_decay(module: nn.Module, param_name: str) -> bool:
    from ..models.ssd import L2Norm

    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, L2Norm)
    return isinstance(module, norms) or param_name == "bias"


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW from an ``optimizer:`` section.

    With ``exclude_bn_bias`` normalisation parameters (BatchNorm, GroupNorm, LayerNorm, the SSD
    ``L2Norm`` scale) and biases are put in a second group without weight decay.
    """
    wd = float(cfg["weight_decay"])
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if cfg["exclude_bn_bias"] and _is_no_decay(module, pname) else decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    name, lr = cfg["name"], float(cfg["lr"])
    if name == "sgd":
        if cfg["nesterov"] and cfg["momentum"] <= 0:
            raise ConfigError("optimizer.nesterov: needs optimizer.momentum > 0")
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg["momentum"]), nesterov=bool(cfg["nesterov"]))
    betas = cfg["betas"]
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"optimizer.betas: must be two numbers in [0, 1), got {betas}")
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, betas=(float(betas[0]), float(betas[1])), eps=float(cfg["eps"]))


def _apply_optimizer_hparams(opt: torch.optim.Optimizer, cfg: Mapping[str, Any]) -> None:
    """After loading an optimizer state: the config in effect decides the hyperparameters."""
    for i, g in enumerate(opt.param_groups):
        g["weight_decay"] = float(cfg["weight_decay"]) if i == 0 else 0.0
        if "momentum" in g and cfg["name"] == "sgd":
            g["momentum"] = float(cfg["momentum"])
            g["nesterov"] = bool(cfg["nesterov"])
        if "betas" in g:
            g["betas"] = (float(cfg["betas"][0]), float(cfg["betas"][1]))
            g["eps"] = float(cfg["eps"])


def check_template(template: str) -> str:
    """Validate ``train.checkpoint_template`` (fields :data:`TEMPLATE_FIELDS`); adds ``.pt`` when missing."""
    values = {k: 1 if k in ("epoch", "iteration") else 0.5 for k in TEMPLATE_FIELDS}
    try:
        name = template.format(**values)
    except KeyError as exc:
        raise ConfigError(f"train.checkpoint_template: unknown field {{{exc.args[0]}}}; "
                          f"available: {', '.join(TEMPLATE_FIELDS)}") from None
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"train.checkpoint_template: {template!r} is not a valid format string: {exc}") from None
    if "/" in name or "\\" in name:
        raise ConfigError(f"train.checkpoint_template: must be a file name without folders, got {template!r}")
    return template if template.endswith(".pt") else template + ".pt"


def _atomic_copy(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, spec)


class _StopFlag:
    """SIGINT (Ctrl-C) and SIGTERM (e.g. a cluster's pre-emption notice) handler: the first signal asks
    the loop to stop after the current iteration and save ``last.pt``; a second one raises
    ``KeyboardInterrupt`` at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s: stopping after this iteration and saving last.pt (send it again to abort)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains an SSD from a config (path, mapping or validated dict) and writes a run folder.

    Args:
        config: YAML path, raw mapping, or ``None`` with ``resume`` (the checkpoint's config is used).
        overrides: ``key.path=value`` strings applied to the config.
        resume: checkpoint to continue from (``last.pt`` of a run; the run folder is its folder).
        callbacks: objects with any of ``on_train_start(trainer)``, ``on_iteration_end(trainer, info)``
            (``info``: epoch, iteration, iter_in_epoch, loss, cls_loss, box_loss, lr),
            ``on_checkpoint(trainer, path)``, ``on_epoch_end(trainer, row)``, ``on_train_end(trainer, result)``.

    Attributes (after :meth:`setup`): ``cfg`` (resolved config), ``model`` (the :class:`SSD`), ``net``
    (what runs the forward: DDP/compiled wrapper or the model), ``optimizer``, ``schedule``,
    ``train_loader``, ``val_dataset``, ``run_dir``, ``device``, ``dist``.
    """

    def __init__(self, config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                 overrides: Sequence[str] = (), *, resume: str | os.PathLike[str] | None = None,
                 callbacks: Sequence[Any] = ()) -> None:
        self._ckpt: dict[str, Any] | None = None
        self.resume_path = Path(resume) if resume is not None else None
        if self.resume_path is not None:
            self._ckpt = read_checkpoint(self.resume_path)
            if config is None:
                stored = self._ckpt.get("config")
                if not isinstance(stored, Mapping):
                    raise CheckpointError(f"{self.resume_path} holds no training config (not written by ssdkit train); "
                                          "give the config file too: ssdkit train CONFIG --resume CHECKPOINT")
                config = copy.deepcopy(dict(stored))
        if config is None:
            raise ConfigError("give a config (YAML path or mapping) or a checkpoint to resume")
        self.cfg: dict[str, Any] = load_config(config, overrides)
        self.callbacks = list(callbacks)
        self.config_source = None if isinstance(config, Mapping) else str(config)
        self._is_setup = False
        self.dist = DistInfo()
        self.losses: list[tuple[int, float, float, float]] = []

    # ------------------------------------------------------------------ setup
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def setup(self) -> Trainer:
        """Build everything (idempotent): distributed group, model, data, optimizer, schedule, state.

        Config errors found while building name the config file: ``configs/x.yaml: model.scales: ...``.
        """
        if self._is_setup:
            return self
        try:
            self._setup()
        except ConfigError as exc:
            if self.config_source and not str(exc).startswith(self.config_source):
                raise ConfigError(f"{self.config_source}: {exc}") from None
            raise
        return self

    def _setup(self) -> None:
        cfg = self.cfg
        tcfg = cfg["train"]
        self.template = check_template(tcfg["checkpoint_template"]) if tcfg["checkpoint_template"] else None
        local_rank = int(os.environ.get("LOCAL_RANK", "0")) if env_world_size() > 1 else 0
        self.device = select_device(tcfg["device"], local_rank)
        self.amp_dtype, use_scaler = resolve_amp(tcfg["amp"], self.device)
        if env_world_size() > 1 and self.device.type not in ("cpu", "cuda"):
            raise ConfigError(f"train.device: distributed training runs on cpu or cuda, not {self.device.type}")
        self.dist = init_distributed(self.device.type, tcfg["ddp_backend"])
        seed_everything(tcfg["seed"])

        ckpt = self._ckpt
        class_names: list[str] | None = None
        if ckpt is not None:
            class_names = list(ckpt.get("class_names") or [])
        elif cfg["data"].get("classes"):
            class_names = [str(c) for c in cfg["data"]["classes"]]
        if class_names is None:
            build_model_from_config(cfg["model"], None, dry_run=True)  # fail on model values before reading data
        else:
            self.model = build_model_from_config(cfg["model"], class_names)

        self._build_data(class_names)
        if class_names is None:
            class_names = list(self.train_dataset.classes)
            self.model = build_model_from_config(cfg["model"], class_names)
        elif list(self.train_dataset.classes) != class_names:
            raise ConfigError(f"data: the dataset's classes {self.train_dataset.classes} differ from the model's "
                              f"{class_names}; set data.classes to the model's class list")
        if ckpt is not None:
            try:
                self.model.load_state_dict(ckpt["state_dict"], strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"{self.resume_path}: weights do not fit the configured model: "
                                      f"{str(exc).splitlines()[0]}") from None

        self.model.to(self.device)
        if tcfg["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
        self.frozen = list(tcfg["freeze"])
        if tcfg["freeze_stride"]:
            by_stride = modules_up_to_stride(self.model, tcfg["freeze_stride"])
            if not by_stride and self.is_main:
                log.warning("train.freeze_stride=%d: no backbone layer runs at that stride or finer; nothing fixed",
                            tcfg["freeze_stride"])
            self.frozen += [n for n in by_stride if n not in self.frozen]
        if self.frozen:
            mcfg = cfg["model"]
            if self.is_main and ckpt is None and not mcfg.get("backbone_weights") and not mcfg.get("checkpoint"):
                log.warning("train.freeze/freeze_stride: the model starts from random weights (no "
                            "model.backbone_weights or model.checkpoint), and fixed layers keep them")
            n_frozen = freeze_modules(self.model, self.frozen)
            n_total = sum(p.numel() for p in self.model.parameters())
            if self.is_main:
                log.info("frozen (train.freeze, train.freeze_stride): %s (%s of %s parameters)",
                         ", ".join(self.frozen), f"{n_frozen:,}", f"{n_total:,}")
        self._build_loaders()
        from ..loss import MultiBoxLoss

        self.loss_fn = MultiBoxLoss(**cfg["loss"])
        self.optimizer = build_optimizer(self.model, cfg["optimizer"])
        self.iters_per_epoch = self._iters_per_epoch()
        self.schedule: LRSchedule = build_schedule(self.optimizer, cfg["schedule"], tcfg["epochs"],
                                                   self.iters_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None
        self.net = self._wrap_model()

        # counters and run state
        self.epoch = 0
        self.iter_in_epoch = 0
        self.iteration = 0
        self.train_time_s = 0.0
        self.epoch_sums = [0.0, 0.0, 0.0, 0.0]  # loss, cls, box, batches of the epoch in progress
        self.window_sums = [0.0, 0.0, 0.0, 0.0]  # same for the iterations.csv row in progress
        self.epochs_requested = tcfg["epochs"]
        self.best_metric = tcfg["keep_best_by"]
        if self.best_metric in ("map", "val_loss") and not self._validates():
            log.info("no validation configured: best.pt is chosen by the training loss")
            self.best_metric = "loss"
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.stop_metric = tcfg["early_stop_by"] or self.best_metric
        self.stop_best: float | None = None
        self.bad_epochs = 0
        self.skipped_batches = 0
        self.last_eval: EvalOutput | None = None
        self.last_eval_epoch: int | None = None
        if ckpt is not None:
            self._load_state(ckpt)
        self.run_dir = self._resolve_run_dir()
        self._is_setup = True

    def _validates(self) -> bool:
        return self.val_dataset is not None and self.cfg["eval"]["every"] > 0

    def _build_data(self, class_names: list[str] | None) -> None:
        from ..data import build_dataset

        cfg = self.cfg
        data_cfg = dict(cfg["data"])
        if not data_cfg.get("format"):
            raise ConfigError("data.format: required for training (voc, csv, coco or yolo)")
        if class_names is not None:
            data_cfg["classes"] = list(class_names)
        self.train_dataset = build_dataset(data_cfg, "train")
        if len(self.train_dataset) == 0:
            raise ConfigError("data.train: the training split has no images")
        data_cfg["classes"] = list(self.train_dataset.classes)
        split = cfg["eval"]["split"]
        self.val_dataset = None
        if cfg["eval"]["every"] > 0 and data_cfg.get(split) is not None:
            self.val_dataset = build_dataset(data_cfg, split)
            if len(self.val_dataset) == 0:
                log.warning("data.%s: no images; validation is skipped", split)
                self.val_dataset = None
        elif cfg["eval"]["every"] > 0:
            log.info("data.%s is not configured: no validation", split)
        self.data_cfg = data_cfg

    def _build_loaders(self) -> None:
        from ..data import build_augmentation, build_loader

        cfg, tcfg = self.cfg, self.cfg["train"]
        mean = getattr(self.model, "mean", None)
        transforms = build_augmentation(cfg["augment"], tuple(self.model.image_size),
                                        background=tuple(round(m) for m in mean) if mean else None)
        enc_kw = dict(cfg["encoder"])
        enc_kw.setdefault("degenerate", "remove")
        try:
            self.encoder = self.model.make_encoder(**enc_kw)
        except (TypeError, ValueError) as exc:
            raise section_error("encoder", list(cfg["encoder"]), exc) from None
        b = tcfg["batch_size"]
        n = len(self.train_dataset)
        per_rank = -(-n // self.dist.world_size)
        drop_last = tcfg["drop_last"]
        if drop_last and per_rank < b:
            log.warning("train.batch_size=%d is larger than the %d training images per process: keeping the "
                        "incomplete batch (train.drop_last ignored)", b, per_rank)
            drop_last = False
        self.drop_last = drop_last
        self.sampler = EpochSampler(n, shuffle=True, seed=tcfg["seed"], rank=self.dist.rank,
                                    world_size=self.dist.world_size, pad=True)
        self.train_loader = build_loader(self.train_dataset, batch_size=b, shuffle=False, workers=tcfg["workers"],
                                         transforms=transforms, encoder=self.encoder, drop_last=drop_last,
                                         seed=tcfg["seed"], sampler=self.sampler,
                                         pin_memory=self.device.type == "cuda")
        self.val_loader = None
        if self.val_dataset is not None:
            ecfg = cfg["eval"]
            self.val_loader = make_eval_loader(self.model, self.val_dataset, ecfg["batch_size"] or b,
                                               tcfg["workers"], ecfg["keep_aspect"], encoder=self.encoder,
                                               dist_info=self.dist)

    def _iters_per_epoch(self) -> int:
        per_rank = self.sampler.total_per_rank()
        b = self.cfg["train"]["batch_size"]
        n = per_rank // b if self.drop_last else -(-per_rank // b)
        m = self.cfg["train"]["max_iters_per_epoch"]
        return max(1, min(n, m) if m else n)

    def _wrap_model(self) -> nn.Module:
        tcfg = self.cfg["train"]
        net: nn.Module = self.model
        if self.dist.distributed:
            if tcfg["sync_bn"] and self.device.type != "cuda":
                if self.is_main:
                    log.warning("train.sync_bn: SyncBatchNorm needs CUDA devices; ignored on %s", self.device.type)
            elif tcfg["sync_bn"]:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                # convert_sync_batchnorm returns a new module tree: the optimizer must see its parameters
                self.optimizer = build_optimizer(self.model, self.cfg["optimizer"])
                self.schedule.optimizer = self.optimizer
                for g in self.optimizer.param_groups:
                    g.setdefault("initial_lr", g["lr"])
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        elif tcfg["sync_bn"]:
            log.info("train.sync_bn: ignored in a single-process run")
        if tcfg["compile"]:
            net = torch.compile(net)  # type: ignore[assignment]
        return net

    def _resolve_run_dir(self) -> Path:
        tcfg = self.cfg["train"]
        if self.resume_path is not None:
            path = self.resume_path.resolve().parent
        else:
            base = Path(tcfg["out_dir"]) / self.cfg["name"]
            path = base
            if not tcfg["exist_ok"]:
                k = 2
                while path.exists() and any(path.iterdir()):
                    path = base.with_name(f"{base.name}-{k}")
                    k += 1
        path = Path(broadcast_object(str(path), self.dist))
        if self.is_main:
            path.mkdir(parents=True, exist_ok=True)
        barrier(self.dist)
        return path

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """The training state stored in checkpoints (besides the model)."""
        return {
            "config": self.cfg,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "iter_in_epoch": self.iter_in_epoch,
            "iteration": self.iteration,
            "epoch_sums": list(self.epoch_sums),
            "window_sums": list(self.window_sums),
            "rng": capture_rng_state(),
            "best": {"metric": self.best_metric, "value": self.best_value, "epoch": self.best_epoch},
            "early_stop": {"metric": self.stop_metric, "best": self.stop_best, "bad_epochs": self.bad_epochs},
            "train_time_s": self.train_time_s,
            "epochs_requested": self.epochs_requested,
            "world_size": self.dist.world_size,
            "batch_size": self.cfg["train"]["batch_size"],
            # the data order and augmentation are functions of (seed, epoch, sample index): this is their state
            "data_rng": {"seed": self.cfg["train"]["seed"], "epoch": self.epoch,
                         "samples_consumed": (self.iter_in_epoch * self.cfg["train"]["batch_size"]
                                              * self.dist.world_size)},
            "versions": {"ssdkit": _version(), "torch": torch.__version__},
        }

    def _load_state(self, ckpt: Mapping[str, Any]) -> None:
        where = self.resume_path
        missing = [k for k in ("optimizer", "epoch", "iteration") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{where} has no training state ({', '.join(missing)} missing): it is a model-only "
                                  "checkpoint; start a new run with model.checkpoint=" + str(where))
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{where}: the optimizer state does not fit optimizer.name="
                                  f"{self.cfg['optimizer']['name']!r} and this model: {exc}") from None
        _apply_optimizer_hparams(self.optimizer, self.cfg["optimizer"])
        for g, base in zip(self.optimizer.param_groups, self.schedule.base_lrs):
            g["initial_lr"] = base
        if ckpt.get("scheduler"):
            self.schedule.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.iter_in_epoch = int(ckpt.get("iter_in_epoch", 0))
        self.iteration = int(ckpt["iteration"])
        self.epoch_sums = [float(v) for v in ckpt.get("epoch_sums", [0.0] * 4)]
        self.window_sums = [float(v) for v in ckpt.get("window_sums", [0.0] * 4)]
        self.train_time_s = float(ckpt.get("train_time_s", 0.0))
        if self.cfg["train"]["time_limit_fit"]:
            self.epochs_requested = max(self.cfg["train"]["epochs"], int(ckpt.get("epochs_requested", 0)))
        best = ckpt.get("best") or {}
        if best.get("metric") == self.best_metric:
            self.best_value, self.best_epoch = best.get("value"), best.get("epoch")
        stop = ckpt.get("early_stop") or {}
        if stop.get("metric") == self.stop_metric:
            self.stop_best, self.bad_epochs = stop.get("best"), int(stop.get("bad_epochs", 0))
        saved_world = int(ckpt.get("world_size", 1))
        if self.iter_in_epoch and (saved_world != self.dist.world_size
                                   or int(ckpt.get("batch_size", 0)) != self.cfg["train"]["batch_size"]):
            log.warning("resuming mid-epoch with another world size or batch size (%s x %s -> %s x %s): the epoch "
                        "continues from the same sample position, but not bit-identically",
                        saved_world, ckpt.get("batch_size"), self.dist.world_size, self.cfg["train"]["batch_size"])
            consumed = self.iter_in_epoch * int(ckpt.get("batch_size", 0)) * saved_world
            per_step = self.cfg["train"]["batch_size"] * self.dist.world_size
            self.iter_in_epoch = consumed // per_step
        if ckpt.get("rng"):
            restore_rng_state(ckpt["rng"])
        if self.is_main:
            log.info("resumed from %s: epoch %d, iteration %d%s", where, self.epoch + (1 if self.iter_in_epoch else 0),
                     self.iteration, f" ({self.iter_in_epoch} iterations into the epoch)" if self.iter_in_epoch else "")

    def save_checkpoint(self, path: Path, metrics: Mapping[str, Any] | None = None) -> Path:
        """Write the model and :meth:`state` to ``path`` atomically (rank 0 only)."""
        from ..checkpoint import save

        out = save(path, self.model, **self.state(), metrics=dict(metrics or {}))
        for cb in self.callbacks:
            fn = getattr(cb, "on_checkpoint", None)
            if fn is not None:
                fn(self, out)
        return out

    # ------------------------------------------------------------------ training
    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _step(self, batch: Mapping[str, Any], stop_requested: bool) -> tuple[list[float], bool]:
        """One optimisation step. Returns the loss parts reduced over ranks and whether any rank asks
        to stop; nothing is updated when the loss is not finite."""
        dev = self.device
        images = batch["images"].to(dev, non_blocking=True)
        if self.cfg["train"]["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = batch["labels"].to(dev, non_blocking=True)
        box_targets = batch["box_targets"].to(dev, non_blocking=True)
        with self._autocast():
            cls_logits, box_deltas = self.net(images)
        parts = self.loss_fn(cls_logits, box_deltas, labels, box_targets)
        loss = parts["loss"]
        values = torch.stack([loss.detach(), parts["cls_loss"].detach(), parts["box_loss"].detach()]).double().cpu()
        vals = values.tolist()
        ws = self.dist.world_size
        if self.dist.distributed:
            reduced = all_reduce_sum([*vals, 1.0 if stop_requested else 0.0], self.dist)
            vals, stop_any = [v / ws for v in reduced[:3]], reduced[3] > 0
        else:
            stop_any = stop_requested
        if not all(math.isfinite(v) for v in vals):
            self.optimizer.zero_grad(set_to_none=True)
            return vals, stop_any
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.cfg["train"]["grad_clip"]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip:
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                if not math.isfinite(float(norm)):
                    self.optimizer.zero_grad(set_to_none=True)
                    return [float("nan"), vals[1], vals[2]], stop_any
            self.optimizer.step()
        return vals, stop_any

    def _nan(self, vals: list[float], epoch: int, batch_index: int) -> None:
        what = "nan" if any(math.isnan(v) for v in vals) else "inf"
        last = self.run_dir / "last.pt"
        where = (f"the last good checkpoint is {last}" if last.is_file()
                 else "no checkpoint was written yet")
        msg = (f"non-finite loss ({what}: loss={vals[0]}, cls_loss={vals[1]}, box_loss={vals[2]}) "
               f"at epoch {epoch + 1}, "
               f"iteration {self.iteration + 1} (batch {batch_index + 1} of the epoch); {where}. Lower optimizer.lr, "
               "set train.grad_clip or a warm-up (schedule.warmup_iters), or check the data")
        if self.cfg["train"]["stop_on_nan"]:
            raise NonFiniteLossError(msg, epoch + 1, self.iteration + 1, last if last.is_file() else None)
        self.skipped_batches += 1
        if self.is_main:
            log.warning("skipping the batch (train.stop_on_nan=false): %s", msg)

    def _maybe_mid_checkpoint(self, last_write: list[float]) -> None:
        tcfg = self.cfg["train"]
        every_it, every_min = tcfg["checkpoint_every_iters"], tcfg["checkpoint_every_min"]
        due = bool(every_it and self.iter_in_epoch % every_it == 0)
        if every_min and time.monotonic() - last_write[0] >= every_min * 60:
            due = True
        if due and self.iter_in_epoch < self.iters_per_epoch:
            if self.is_main:
                self.save_checkpoint(self.run_dir / "last.pt", {"epoch": self.epoch + 1, "iteration": self.iteration})
            last_write[0] = time.monotonic()

    def _train_epoch(self, epoch: int, logger: RunLogger, stop: _StopFlag, last_write: list[float]) -> bool:
        """Run the rest of ``epoch``; returns ``False`` when interrupted (state saved by the caller)."""
        tcfg = self.cfg["train"]
        b, ws = tcfg["batch_size"], self.dist.world_size
        self.model.train()
        keep_frozen_in_eval(self.model, self.frozen)
        self.sampler.resume_at(epoch, self.iter_in_epoch * b * ws)
        self.train_loader.set_epoch(epoch)
        bar = ProgressBar(self.iters_per_epoch, self.iter_in_epoch, f"epoch {epoch + 1}/{tcfg['epochs']}",
                          self.is_main and tcfg["progress"])
        log_every = tcfg["log_every"]
        t_last = time.perf_counter()
        try:
            for batch in self.train_loader:
                if self.iter_in_epoch >= self.iters_per_epoch:
                    break
                lr = self.schedule.step(epoch, self.iteration)
                vals, stop_any = self._step(batch, stop.requested)
                if not all(math.isfinite(v) for v in vals):
                    self._nan(vals, epoch, self.iter_in_epoch)
                else:
                    for i, v in enumerate(vals):
                        self.epoch_sums[i] += v
                        self.window_sums[i] += v
                    self.epoch_sums[3] += 1
                    self.window_sums[3] += 1
                self.iteration += 1
                self.iter_in_epoch += 1
                self.losses.append((self.iteration, *vals))
                now = time.perf_counter()
                img_s = len(batch["images"]) * ws / max(now - t_last, 1e-9)
                t_last = now
                if self.iteration % log_every == 0 and self.window_sums[3] > 0:
                    n = self.window_sums[3]
                    logger.iteration({"epoch": epoch + 1, "iteration": self.iteration, "lr": lr,
                                      "loss": self.window_sums[0] / n, "cls_loss": self.window_sums[1] / n,
                                      "box_loss": self.window_sums[2] / n, "img_s": round(img_s, 2)})
                    self.window_sums = [0.0, 0.0, 0.0, 0.0]
                bar.update({"loss": f"{vals[0]:.3f}", "cls": f"{vals[1]:.3f}", "box": f"{vals[2]:.3f}",
                            "lr": f"{lr:.2e}", "img/s": f"{img_s:.1f}"})
                info = {"epoch": epoch + 1, "iteration": self.iteration, "iter_in_epoch": self.iter_in_epoch,
                        "loss": vals[0], "cls_loss": vals[1], "box_loss": vals[2], "lr": lr}
                for cb in self.callbacks:
                    fn = getattr(cb, "on_iteration_end", None)
                    if fn is not None:
                        fn(self, info)
                if stop_any or (stop.requested and not self.dist.distributed):  # DDP: agreed in the next step
                    return False
                self._maybe_mid_checkpoint(last_write)
        finally:
            bar.close()
        return True

    def _validate(self, epoch: int) -> EvalOutput:
        ecfg, tcfg = self.cfg["eval"], self.cfg["train"]
        assert self.val_loader is not None
        keep = tcfg["plot_images"] if self.is_main else 0
        return evaluate(
            self.model, self.val_loader, ecfg["metric"], device=self.device,
            confidence_thresh=ecfg["confidence_thresh"], nms_iou=ecfg["nms_iou"], top_k=ecfg["top_k"],
            nms=ecfg["nms"], iou_threshold=ecfg["iou_threshold"], loss_fn=self.loss_fn, encoder=self.encoder,
            autocast_dtype=self.amp_dtype, channels_last=tcfg["channels_last"], dist_info=self.dist,
            keep_samples=keep, progress=self.is_main and tcfg["progress"],
        )

    def _improved(self, value: float | None, best: float | None, metric: str, min_delta: float = 0.0) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best + min_delta if metric == "map" else value < best - min_delta

    def _end_epoch(self, epoch: int, seconds: float, logger: RunLogger) -> tuple[dict[str, Any], bool]:
        """Validation, logs, checkpoints, best/early-stop bookkeeping. Returns the row and whether
        early stopping triggers."""
        tcfg, ecfg = self.cfg["train"], self.cfg["eval"]
        n = max(self.epoch_sums[3], 1.0)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "iteration": self.iteration, "lr": self.optimizer.param_groups[0]["lr"],
            "loss": self.epoch_sums[0] / n if self.epoch_sums[3] else None,
            "cls_loss": self.epoch_sums[1] / n if self.epoch_sums[3] else None,
            "box_loss": self.epoch_sums[2] / n if self.epoch_sums[3] else None,
            "val_loss": None, "map": None,
        }
        t0 = time.perf_counter()
        last_epoch = epoch + 1 == tcfg["epochs"]
        if self.val_loader is not None and ((epoch + 1) % ecfg["every"] == 0 or last_epoch):
            out = self._validate(epoch)
            self.last_eval, self.last_eval_epoch = out, epoch + 1
            row["val_loss"], row["map"] = out.val_loss, out.map if math.isfinite(out.map) else None
        seconds += time.perf_counter() - t0
        self.train_time_s += seconds
        row["time"] = round(seconds, 3)

        self.schedule.epoch_end(row)
        value = row.get(self.best_metric)
        improved = self._improved(value, self.best_value, self.best_metric)
        if improved:
            self.best_value, self.best_epoch = float(value), epoch + 1
        early = False
        if tcfg["early_stop_patience"]:
            sv = row.get(self.stop_metric)
            if sv is not None and math.isfinite(sv):
                if self._improved(sv, self.stop_best, self.stop_metric, tcfg["early_stop_min_delta"]):
                    self.stop_best, self.bad_epochs = float(sv), 0
                else:
                    self.bad_epochs += 1
                    early = self.bad_epochs >= tcfg["early_stop_patience"]
        self.epoch = epoch + 1
        self.iter_in_epoch = 0
        self.epoch_sums = [0.0, 0.0, 0.0, 0.0]

        if self.is_main:
            logger.epoch(row)
            metric_name = "mAP" if ecfg["metric"] != "coco" else "AP"
            log.info("epoch %d/%d  loss %s (cls %s, box %s)  val_loss %s  %s(%s) %s  best %s %s @ %s  lr %.3g  %.1f s",
                     epoch + 1, tcfg["epochs"], _fmt(row["loss"]), _fmt(row["cls_loss"]), _fmt(row["box_loss"]),
                     _fmt(row["val_loss"]), metric_name, ecfg["metric"], _fmt(row["map"]), self.best_metric,
                     _fmt(self.best_value), self.best_epoch if self.best_epoch is not None else "-", row["lr"],
                     seconds)
            last = self.save_checkpoint(self.run_dir / "last.pt", row)
            if improved:
                _atomic_copy(last, self.run_dir / "best.pt")
            if self.template and ((epoch + 1) % tcfg["checkpoint_every"] == 0 or last_epoch):
                values = {k: (row.get(k) if row.get(k) is not None else float("nan")) for k in TEMPLATE_FIELDS}
                _atomic_copy(last, self.run_dir / self.template.format(**values))
        for cb in self.callbacks:
            fn = getattr(cb, "on_epoch_end", None)
            if fn is not None:
                fn(self, row)
        return row, early

    def fit(self) -> TrainResult:
        """Train until ``train.epochs``, early stopping, the time limit, an interrupt or a NaN loss."""
        self.setup()
        tcfg = self.cfg["train"]
        file_handler = None
        logger = RunLogger(self.run_dir, enabled=self.is_main,
                           resume_iteration=self.iteration if self._ckpt is not None else None,
                           tensorboard=tcfg["tensorboard"])
        stop_reason = "completed"
        completed = False
        try:
            if self.is_main:
                (self.run_dir / "config.yaml").write_text(dump_config(self.cfg), encoding="utf-8")
                file_handler = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
                file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
                logging.getLogger("ssdkit").addHandler(file_handler)
                self._log_start()
                self._anchor_check()
            for cb in self.callbacks:
                fn = getattr(cb, "on_train_start", None)
                if fn is not None:
                    fn(self)
            last_write = [time.monotonic()]
            with _StopFlag() as stop:
                while self.epoch < tcfg["epochs"]:
                    epoch = self.epoch
                    t0 = time.perf_counter()
                    try:
                        finished = self._train_epoch(epoch, logger, stop, last_write)
                    except NonFiniteLossError:
                        stop_reason = "nan"
                        raise
                    seconds = time.perf_counter() - t0
                    if not finished:
                        self.train_time_s += seconds
                        if self.is_main:
                            self.save_checkpoint(self.run_dir / "last.pt",
                                                 {"epoch": epoch + 1, "iteration": self.iteration})
                            log.warning("interrupted at epoch %d, iteration %d; resume with: ssdkit train --resume %s",
                                        epoch + 1, self.iteration, self.run_dir / "last.pt")
                        stop_reason = "interrupted"
                        break
                    if tcfg["time_limit_min"] and tcfg["time_limit_fit"]:
                        self._fit_epochs_to_time(tcfg["time_limit_min"], self.train_time_s + seconds, seconds)
                    row, early = self._end_epoch(epoch, seconds, logger)
                    last_write[0] = time.monotonic()
                    stop_now = None
                    if early:
                        stop_now = "early_stop"
                        if self.is_main:
                            log.info("early stopping: %s did not improve for %d evaluated epoch(s)", self.stop_metric,
                                     tcfg["early_stop_patience"])
                    limit = tcfg["time_limit_min"]
                    if limit and self.epoch < tcfg["epochs"] and self.train_time_s + row["time"] > limit * 60:
                        stop_now = stop_now or "time_limit"
                        if self.is_main:
                            log.info("time limit: %.1f of %.1f min used; the next epoch (~%.1f min) would not fit",
                                     self.train_time_s / 60, limit, row["time"] / 60)
                    stop_now = broadcast_object(stop_now, self.dist)
                    if stop_now:
                        stop_reason = stop_now
                        break
                    if stop.requested:
                        stop_reason = "interrupted"
                        break
            result = self._finish(stop_reason, logger)
            completed = True
            return result
        except NonFiniteLossError as exc:
            if self.is_main:
                log.error("%s", exc)
                with contextlib.suppress(Exception):
                    self._finish("nan", logger, final_eval=False)
            raise
        finally:
            logger.close()
            if file_handler is not None:
                logging.getLogger("ssdkit").removeHandler(file_handler)
                file_handler.close()
            if self.dist.distributed:
                # Release the DDP wrapper (its reducer holds the process group) before the group is
                # destroyed: freed later, at interpreter exit, it aborted a rank now and then
                # ("terminate called without an active exception") after a run had completed.
                self.net = self.model
                import gc

                gc.collect()
            cleanup(self.dist, wait=completed)

    def _fit_epochs_to_time(self, limit_min: float, used_s: float, epoch_s: float) -> None:
        """``train.time_limit_fit``: after each epoch (``epoch_s`` seconds of training, ``used_s`` used in all),
        set ``train.epochs`` to what fits in the time limit at that speed (at most the requested epochs), so
        that the schedule (cosine, step) completes within the budget. The value goes into the run's config."""
        tcfg = self.cfg["train"]
        done = self.epoch + 1  # the epoch just trained, not yet counted
        fit = done + max(0, int((limit_min * 60 - used_s) // max(epoch_s * 1.05, 1e-6)))  # 5%: validation
        fit = min(int(broadcast_object(fit, self.dist)), self.epochs_requested)
        if fit != tcfg["epochs"]:
            if self.is_main:
                log.info("time limit: %d epoch(s) fit in %.1f min at ~%.2f min per epoch; training %d epochs of the "
                         "%d requested (train.time_limit_fit)", fit, limit_min, epoch_s / 60, fit,
                         self.epochs_requested)
                (self.run_dir / "config.yaml").write_text(dump_config({**self.cfg, "train": {**tcfg, "epochs": fit}}),
                                                          encoding="utf-8")
            tcfg["epochs"] = fit
            self.schedule.epochs = fit

    # ------------------------------------------------------------------ start and end
    def _log_start(self) -> None:
        m = self.model
        n_params = sum(p.numel() for p in m.parameters())
        tcfg = self.cfg["train"]
        log.info("run folder %s", self.run_dir)
        log.info("model %s: %d classes %s, input %s, %d anchors, %.2fM parameters", m.config.get("name"), m.n_classes,
                 m.class_names, "x".join(map(str, m.image_size)), m.num_anchors, n_params / 1e6)
        log.info("data: %d training images%s; %d iterations/epoch of %d x %d image(s); device %s%s%s",
                 len(self.train_dataset),
                 f", {len(self.val_dataset)} validation images" if self.val_dataset is not None else "",
                 self.iters_per_epoch, self.dist.world_size, tcfg["batch_size"], self.device,
                 f", amp {self.amp_dtype}".replace("torch.", "") if self.amp_dtype else "",
                 f", DDP {self.dist.backend} x{self.dist.world_size}" if self.dist.distributed else "")

    def _anchor_check(self) -> None:
        """Anchor coverage of the training boxes (``ssdkit.anchors.coverage`` when it exists)."""
        if not self.cfg["train"]["anchor_check"]:
            return
        from .. import anchors

        fn = getattr(anchors, "coverage", None)
        if fn is None:
            return
        enc = self.cfg["encoder"]
        try:
            report = fn(self.train_dataset, self.model, pos_iou_threshold=enc["pos_iou_threshold"],
                        neg_iou_limit=enc["neg_iou_limit"])
        except Exception as exc:  # the analysis is advisory: never stop training for it
            log.debug("anchor coverage check skipped: %s", exc)
            return
        frac = None
        for key in ("pos_fraction", "coverage", "fraction_pos"):
            frac = report.get(key) if isinstance(report, Mapping) else getattr(report, key, None)
            if frac is not None:
                break
        if isinstance(frac, int | float) and frac < 0.95:
            log.warning("anchor coverage: only %.1f%% of the training boxes have an anchor with IoU >= %.2f; "
                        "see `ssdkit anchors analyze` / `ssdkit anchors fit`", 100 * frac, enc["pos_iou_threshold"])

    def _final_eval(self) -> EvalOutput | None:
        if self.val_loader is None:
            return None
        if self.last_eval is not None and self.last_eval_epoch == self.epoch:
            return self.last_eval
        return self._validate(self.epoch)

    def _finish(self, stop_reason: str, logger: RunLogger, final_eval: bool = True) -> TrainResult:
        out = self._final_eval() if final_eval and stop_reason != "nan" else None
        rd = self.run_dir
        metrics: dict[str, Any] = out.to_dict() if out is not None else {}
        if self.is_main:
            logger.close()
            history = read_csv(rd / "results.csv")
            if self.cfg["train"]["plots"]:
                self._plots(history, out)
            summary = {
                "stop_reason": stop_reason,
                "epochs_completed": self.epoch,
                "iterations": self.iteration,
                "train_time_s": round(self.train_time_s, 3),
                "best": {"metric": self.best_metric, "value": self.best_value, "epoch": self.best_epoch,
                         "checkpoint": str(rd / "best.pt") if (rd / "best.pt").is_file() else None},
                "last_checkpoint": str(rd / "last.pt") if (rd / "last.pt").is_file() else None,
                "skipped_batches": self.skipped_batches,
                "final": metrics,
            }
            from ..eval.report import write_json

            write_json(rd / "metrics.json", summary)
            if out is not None and out.result is not None:
                log.info("final %s %s %.4f on %d %s images\n%s", "mAP" if out.metric != "coco" else "AP", out.metric,
                         out.map, out.n_images, self.cfg["eval"]["split"], out.result.summary_table())
            log.info("done (%s) in %.1f min; artefacts in %s", stop_reason, self.train_time_s / 60, rd)
        else:
            history = []
        result = TrainResult(
            run_dir=rd, last=rd / "last.pt" if (rd / "last.pt").is_file() else None,
            best=rd / "best.pt" if (rd / "best.pt").is_file() else None, epochs_completed=self.epoch,
            iteration=self.iteration, stop_reason=stop_reason, best_metric=self.best_metric,
            best_value=self.best_value, best_epoch=self.best_epoch, metrics=metrics, history=history,
            losses=list(self.losses), train_time_s=self.train_time_s,
        )
        for cb in self.callbacks:
            fn = getattr(cb, "on_train_end", None)
            if fn is not None:
                fn(self, result)
        return result

    def _plots(self, history: list[dict[str, Any]], out: EvalOutput | None) -> None:
        from .plots import plot_losses, plot_map, plot_val_predictions

        rd = self.run_dir
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("loss.png", lambda: plot_losses(history, read_csv(rd / "iterations.csv"), rd / "loss.png")),
            ("map.png", lambda: plot_map(history, rd / "map.png", self.cfg["eval"]["metric"])),
        ]
        if out is not None and out.result is not None:
            steps.append(("pr_curves.png", lambda: out.result.plot_pr(rd / "pr_curves.png")))
        if out is not None and out.samples:
            steps.append(("val_predictions.png", lambda: plot_val_predictions(
                out.samples, self.model.class_names, rd / "val_predictions.png", self.cfg["eval"]["plot_score"])))
        for name, fn in steps:
            try:
                fn()
            except Exception as exc:  # a plot must never lose a finished run
                log.warning("could not draw %s: %s", name, exc)


def _version() -> str:
    from .. import __version__

    return __version__


def train(config: str | os.PathLike[str] | Mapping[str, Any] | None = None, overrides: Sequence[str] = (), *,
          resume: str | os.PathLike[str] | None = None, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train from a config (YAML path or mapping) with ``key.path=value`` overrides, or resume a run.

    Returns a :class:`TrainResult`; raises :class:`~ssdkit.errors.ConfigError` for bad configs and
    :class:`NonFiniteLossError` when the loss becomes NaN/inf (the last good checkpoint is kept).
    """
    return Trainer(config, overrides, resume=resume, callbacks=callbacks).fit()


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: ssdkit train CONFIG")
