"""Run configuration: one YAML file, validated, with ``key.path=value`` overrides.

A config has the sections of ``docs/architecture.md``: ``name``, ``model``, ``data``, ``augment``,
``encoder``, ``loss``, ``optimizer``, ``schedule``, ``train``, ``eval``. Every key has a type and a
default here (``model`` and ``data`` additionally accept the keys their builders take and are
checked again when the model and datasets are built). Errors are :class:`~ssdkit.errors.ConfigError`
naming the key path and, for files, the file::

    ssdkit train: error: configs/x.yaml: train.epochs: expected an integer >= 1, got 'ten'

Usage::

    cfg = load_config("configs/bccd_ssdlite_mnv2.yaml", overrides=["data.root=/data/bccd", "train.epochs=5"])
    cfg["train"]["batch_size"]   # plain nested dicts after validation
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

__all__ = ["load_config", "validate_config", "apply_overrides", "default_config", "dump_config", "SCHEMA"]


@dataclass(frozen=True)
class Field:
    """One config key: accepted types, default, optional check returning an error text or None."""

    types: tuple[type, ...]
    default: Any
    check: Callable[[Any], str | None] | None = None
    doc: str = ""
    nullable: bool = False


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, float) and not math.isfinite(v):
            return "must be finite"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
        return None

    return check


def _choice(*options: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else f"must be one of {', '.join(map(repr, options))}"

    return check


def _list_of_numbers(v: Any) -> str | None:
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
        return "must be a list of numbers"
    return None


def _positive_ints(v: Any) -> str | None:
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        return "must be a list of non-negative integers"
    if list(v) != sorted(v):
        return "must be increasing"
    return None


def _module_names(v: Any) -> str | None:
    if not all(isinstance(x, str) and x for x in v):
        return "must be a list of module names (strings)"
    return None


INT = (int,)
NUM = (int, float)
STR = (str,)
BOOL = (bool,)
LIST = (list,)
DICT = (dict,)

# Sections whose extra keys are passed on to a builder that validates them (model, data, augment).
OPEN_SECTIONS = {"model", "data", "augment"}

SCHEMA: dict[str, Any] = {
    "name": Field(STR, "run", doc="run folder name under train.out_dir"),
    "demo": Field(DICT, None, nullable=True, doc="`ssdkit demo` only: the synthetic dataset's size and seed"),
    "model": {
        "name": Field(STR, None, doc="architecture, see `ssdkit models`", nullable=True),
        "image_size": Field((int, list), None, nullable=True, doc="H or [H, W]; default: the model's"),
        "backbone_weights": Field(STR, None, nullable=True, doc="imagenet | path | null"),
        "checkpoint": Field(STR, None, nullable=True, doc="start from this ssdkit checkpoint's weights"),
    },
    "data": {
        "format": Field(STR, None, nullable=True, check=_choice("voc", "csv", "coco", "yolo")),
        "root": Field(STR, None, nullable=True),
        "classes": Field(LIST, None, nullable=True),
        "cache": Field(STR, "none", check=_choice("none", "memory", "hdf5")),
    },
    "augment": {
        "chain": Field(STR, "ssd", check=_choice("ssd", "constant_size", "variable_size", "none")),
    },
    "encoder": {
        "matching": Field(STR, "multi", check=_choice("multi", "bipartite")),
        "pos_iou_threshold": Field(NUM, 0.5, check=_range(0, 1, lo_open=True)),
        "neg_iou_limit": Field(NUM, 0.3, check=_range(0, 1)),
    },
    "loss": {
        "neg_pos_ratio": Field(NUM, 3, check=_range(0)),
        "n_neg_min": Field(INT, 0, check=_range(0)),
        "alpha": Field(NUM, 1.0, check=_range(0)),
        "mining": Field(STR, "batch", check=_choice("batch", "per_image")),
    },
    "optimizer": {
        "name": Field(STR, "sgd", check=_choice("sgd", "adam", "adamw")),
        "lr": Field(NUM, 1e-3, check=_range(0, lo_open=True)),
        "momentum": Field(NUM, 0.9, check=_range(0, 1)),
        "nesterov": Field(BOOL, False),
        "weight_decay": Field(NUM, 5e-4, check=_range(0)),
        "exclude_bn_bias": Field(BOOL, False, doc="no weight decay on norm layers and biases"),
        "betas": Field(LIST, [0.9, 0.999], check=_list_of_numbers),
        "eps": Field(NUM, 1e-8, check=_range(0, lo_open=True)),
    },
    "schedule": {
        "name": Field(STR, "multistep", check=_choice("constant", "step", "multistep", "cosine", "plateau")),
        "by": Field(STR, "epoch", check=_choice("epoch", "iter")),
        "milestones": Field(LIST, [], check=_positive_ints, doc="multistep: epochs (or iterations)"),
        "step_size": Field(INT, 10, check=_range(1)),
        "gamma": Field(NUM, 0.1, check=_range(0, lo_open=True)),
        "min_lr": Field(NUM, 0.0, check=_range(0)),
        "warmup_iters": Field(INT, 0, check=_range(0)),
        "warmup_factor": Field(NUM, 0.001, check=_range(0, 1)),
        "patience": Field(INT, 3, check=_range(0), doc="plateau: epochs without improvement"),
        "monitor": Field(STR, "val_loss", check=_choice("val_loss", "map", "loss"),
                         doc="plateau: metric to watch (val_loss, map, loss)"),
    },
    "train": {
        "epochs": Field(INT, 10, check=_range(1)),
        "batch_size": Field(INT, 16, check=_range(1)),
        "workers": Field(INT, 2, check=_range(0)),
        "device": Field(STR, "auto", doc="auto | cpu | cuda | cuda:N"),
        "amp": Field((bool, str), False, doc="false | true | bf16 | fp16"),
        "channels_last": Field(BOOL, False),
        "compile": Field(BOOL, False),
        "freeze": Field(LIST, [], check=_module_names,
                        doc="module names kept fixed (no gradient, BatchNorm statistics frozen), e.g. "
                            "[backbone.stage1.0, backbone.stage1.1]; `ssdkit models NAME --modules 3` lists them"),
        "freeze_stride": Field(INT, 0, check=_range(0),
                               doc="also fix the backbone's leading layers whose outputs are at this stride or "
                                   "finer (2: the stem; 4: MobileNet's stem and stride-4 blocks); 0: none"),
        "grad_clip": Field(NUM, None, nullable=True, check=_range(0, lo_open=True)),
        "seed": Field(INT, 0),
        "out_dir": Field(STR, "runs"),
        "checkpoint_every": Field(INT, 1, check=_range(1),
                                  doc="epochs between template-named checkpoints (last.pt is written every epoch)"),
        "checkpoint_template": Field(STR, None, nullable=True,
                                     doc="extra checkpoint name, e.g. epoch{epoch:02d}_loss{loss:.4f}.pt"),
        "checkpoint_every_iters": Field(INT, None, nullable=True, check=_range(1),
                                        doc="also write last.pt every N iterations inside an epoch"),
        "checkpoint_every_min": Field(NUM, None, nullable=True, check=_range(0, lo_open=True),
                                      doc="also write last.pt when this many minutes passed since the last write"),
        "keep_best_by": Field(STR, "map", doc="metric for best.pt: map | val_loss | loss"),
        "early_stop_patience": Field(INT, None, nullable=True, check=_range(1),
                                     doc="stop after this many evaluated epochs without improvement"),
        "early_stop_by": Field(STR, None, nullable=True, doc="metric for early stopping (default: keep_best_by)"),
        "early_stop_min_delta": Field(NUM, 0.0, check=_range(0), doc="smallest change that counts as improvement"),
        "stop_on_nan": Field(BOOL, True, doc="stop on a non-finite loss (false: skip that batch and go on)"),
        "max_iters_per_epoch": Field(INT, None, nullable=True, check=_range(1)),
        "time_limit_min": Field(NUM, None, nullable=True, check=_range(0, lo_open=True),
                                doc="stop after the epoch that would otherwise end past this many minutes of "
                                    "training (counted across resumes)"),
        "time_limit_fit": Field(BOOL, False, doc="after each epoch, set train.epochs to what fits in "
                                                 "train.time_limit_min (at most as requested; the schedule follows)"),
        "drop_last": Field(BOOL, True, doc="drop the last incomplete training batch of each epoch"),
        "sync_bn": Field(BOOL, False),
        "ddp_backend": Field(STR, "auto", check=_choice("auto", "nccl", "gloo")),
        "log_every": Field(INT, 20, check=_range(1), doc="iterations between iterations.csv/TensorBoard rows"),
        "progress": Field(BOOL, True, doc="tqdm progress bar per epoch"),
        "tensorboard": Field(BOOL, True),
        "plots": Field(BOOL, True),
        "plot_images": Field(INT, 8, check=_range(0), doc="validation images in val_predictions.png"),
        "exist_ok": Field(BOOL, False, doc="reuse runs/<name> instead of creating runs/<name>-2, -3, ..."),
        "anchor_check": Field(BOOL, True, doc="warn when anchor coverage of the training boxes is below 95%"),
    },
    "eval": {
        "metric": Field(STR, "voc07", check=_choice("voc07", "voc10", "coco")),
        "every": Field(INT, 1, check=_range(0), doc="epochs between validations (0: never)"),
        "iou_threshold": Field(NUM, 0.5, check=_range(0, 1, lo_open=True), doc="match IoU for AP"),
        "confidence_thresh": Field(NUM, 0.01, check=_range(0, 1)),
        "nms_iou": Field(NUM, 0.45, check=_range(0, 1)),
        "top_k": Field(INT, 200, check=_range(1)),
        "nms": Field(STR, "per_class", check=_choice("per_class", "global")),
        "batch_size": Field(INT, None, nullable=True, check=_range(1)),
        "split": Field(STR, "val", check=_choice("train", "val", "test"), doc="split used for validation"),
        "keep_aspect": Field(BOOL, False, doc="pad images to the input aspect ratio before resizing"),
        "plot_score": Field(NUM, 0.3, check=_range(0, 1), doc="score threshold of drawn predictions"),
    },
}


def default_config() -> dict[str, Any]:
    """All defaults as a nested plain dict."""

    def build(node: Any) -> Any:
        if isinstance(node, Field):
            return copy.deepcopy(node.default)
        return {k: build(v) for k, v in node.items()}

    return build(SCHEMA)


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
             dict: "a mapping"}
    if types == NUM:
        return "a number"
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_field(path: str, field: Field, value: Any) -> Any:
    if value is None:
        if field.nullable or field.default is None:
            return None
        raise ConfigError(f"{path}: must not be null (default {field.default!r})")
    ok = isinstance(value, field.types) and not (isinstance(value, bool) and bool not in field.types)
    if not ok and float in field.types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{path}: expected {_type_name(field.types)}, got {value!r}")
    if field.check is not None:
        err = field.check(value)
        if err:
            raise ConfigError(f"{path}: {err}, got {value!r}")
    return value


def _unknown_key(path: str, key: str, known: Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"{path}{key}: unknown key{hint}")


def validate_config(cfg: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """Validate ``cfg`` against :data:`SCHEMA`, fill defaults, and return a new nested dict.

    Sections ``model``, ``data`` and ``augment`` keep extra keys (validated by their builders).
    Cross-field checks: the schedule's milestones fit in the epochs; a model name is given.
    """
    prefix = f"{source}: " if source else ""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{prefix}the config must be a mapping of sections, got {type(cfg).__name__}")
    out = default_config()
    try:
        for key, value in cfg.items():
            if key not in SCHEMA:
                raise _unknown_key("", key, SCHEMA)
            spec = SCHEMA[key]
            if isinstance(spec, Field):
                out[key] = _check_field(key, spec, value)
                continue
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: expected a mapping of keys, got {value!r}")
            for sub, sub_value in value.items():
                if not isinstance(sub, str):
                    raise ConfigError(f"{key}: keys must be strings, got {sub!r}")
                if sub in spec:
                    out[key][sub] = _check_field(f"{key}.{sub}", spec[sub], sub_value)
                elif key in OPEN_SECTIONS:
                    out[key][sub] = copy.deepcopy(sub_value)
                else:
                    raise _unknown_key(f"{key}.", sub, spec)
        if not out["model"].get("name"):
            raise ConfigError("model.name: required (see `ssdkit models` for the choices)")
        sched = out["schedule"]
        if (sched["name"] == "multistep" and sched["by"] == "epoch" and sched["milestones"]
                and max(sched["milestones"]) > out["train"]["epochs"]):
            raise ConfigError(
                f"schedule.milestones: {sched['milestones']} go beyond train.epochs={out['train']['epochs']}"
            )
        amp = out["train"]["amp"]
        if isinstance(amp, str) and amp not in ("bf16", "fp16"):
            raise ConfigError(f"train.amp: must be true, false, 'bf16' or 'fp16', got {amp!r}")
        for key in ("keep_best_by", "early_stop_by"):
            value = out["train"][key]
            if value is not None and value not in ("map", "val_loss", "loss"):
                raise ConfigError(f"train.{key}: must be 'map', 'val_loss' or 'loss', got {value!r}")
        name = out["name"]
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ConfigError(f"name: must be a plain folder name (no '/'), got {name!r}")
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None
    return out


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config dict (in place)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value, e.g. train.epochs=5")
        path, _, raw = item.partition("=")
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"override {item!r}: empty key path")
        node = cfg
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
            node = nxt
        node[keys[-1]] = _parse_value(raw)
    return cfg


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with errors that name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}:{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text (UTF-8) YAML file") from None
    if data is None:
        raise ConfigError(f"{p}: the file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Load, override and validate a config from a YAML path or a mapping."""
    if isinstance(path, Mapping):
        raw, source = copy.deepcopy(dict(path)), None
    else:
        raw, source = read_yaml(path), str(path)
    apply_overrides(raw, overrides)
    return validate_config(raw, source)


def dump_config(cfg: Mapping[str, Any]) -> str:
    """YAML text of a config (sections in schema order)."""
    ordered = {k: cfg[k] for k in SCHEMA if k in cfg}
    ordered.update({k: v for k, v in cfg.items() if k not in ordered})
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None, width=100)
