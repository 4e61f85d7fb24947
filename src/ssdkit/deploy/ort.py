"""ONNX Runtime backend: CPU-tuned sessions and a runner for ssdkit graphs.

Session settings (measured on 2 AMD EPYC cores, SSDLite320-MobileNetV3 fp32, batch 8; see
``docs/deploy.md`` for the table):

- ``intra_op_num_threads`` = the CPUs this process may use (``os.sched_getaffinity``), not
  ONNX Runtime's default of all cores of the machine, which oversubscribes containers.
- ``inter_op_num_threads=1`` and sequential execution: SSD graphs are chains of convolutions with
  little branch parallelism; parallel execution only adds scheduling overhead.
- graph optimisation ``ORT_ENABLE_ALL`` (conv + BN + activation fusion, NCHWc layout transforms):
  the largest single gain over ``ORT_ENABLE_BASIC``.
- CPU memory arena and memory pattern on (default): repeated runs at one batch size reuse buffers.
- ``allow_spinning`` off by default: ssdkit's pipeline alternates between Python (decode, resize,
  NMS) and the session; spinning worker threads would compete with that Python thread and with
  other processes for the same cores. The :class:`~ssdkit.deploy.Predictor` turns it on at batch 1,
  where short operators make thread wake-ups the larger cost (``python bench/predictor.py``: 1.20x
  end to end quiet, 1.00x beside a busy process; at batch 8 0.95x and 0.67x).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError

__all__ = ["available_cpus", "session_options", "create_session", "OrtRunner", "read_metadata"]


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None, optimization: str = "all", spinning: bool = False,
                    arena: bool = True, profile: bool = False) -> Any:
    """An ``onnxruntime.SessionOptions`` with ssdkit's CPU settings (module docstring).

    Args:
        threads: intra-op threads (default: :func:`available_cpus`).
        optimization: ``'all'`` | ``'extended'`` | ``'basic'`` | ``'disable'``.
        spinning: let idle intra-op threads spin (lower latency for back-to-back runs, but burns
            the cores the Python side of the pipeline needs).
        arena: CPU memory arena.
        profile: write an ONNX Runtime profile JSON.
    """
    import onnxruntime as ort

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    if optimization not in levels:
        raise ValueError(f"optimization must be one of {sorted(levels)}, got {optimization!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or available_cpus())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = levels[optimization]
    so.enable_cpu_mem_arena = bool(arena)
    so.enable_mem_pattern = True
    so.enable_profiling = bool(profile)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3  # errors only: the quantised graphs log harmless fusion notes
    return so


def create_session(model: str | os.PathLike[str] | bytes, threads: int | None = None,
                   providers: Sequence[str] | None = None, **options: Any) -> Any:
    """An ``onnxruntime.InferenceSession`` on a path or serialized model, with :func:`session_options`.

    Raises :class:`~ssdkit.errors.ExportError` naming the file when ONNX Runtime cannot load it.
    """
    import onnxruntime as ort

    src: Any = model if isinstance(model, bytes) else os.fspath(model)
    if not isinstance(model, bytes) and not Path(src).is_file():
        raise FileNotFoundError(f"ONNX model not found: {src}")
    try:
        return ort.InferenceSession(src, sess_options=session_options(threads, **options),
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        name = "<in-memory model>" if isinstance(model, bytes) else src
        raise ExportError(f"{name}: onnxruntime cannot load the model: {str(exc).splitlines()[0][:300]}") from None


def read_metadata(model: str | os.PathLike[str] | bytes) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (ssdkit stores its model description there)."""
    import onnx

    try:
        if isinstance(model, bytes):
            proto = onnx.load_from_string(model)
        else:
            proto = onnx.load(os.fspath(model), load_external_data=False)
    except Exception as exc:
        name = "<bytes>" if isinstance(model, bytes) else os.fspath(model)
        raise ExportError(f"{name}: not a readable ONNX file ({exc})") from None
    return {p.key: p.value for p in proto.metadata_props}


class OrtRunner:
    """Runs an ssdkit ONNX graph on uint8 batches ``[B, 3, H, W]``.

    A graph exported with a static batch ``b`` is run in chunks of ``b`` (the last chunk padded by
    repeating its last image, the padding's outputs dropped), so callers never see the difference.

    Attributes:
        session: the ``onnxruntime.InferenceSession``.
        input_name, input_dtype: the image input (``uint8`` for ssdkit exports; float graphs get a cast).
        output_names: e.g. ``['cls_logits', 'box_deltas']`` or ``['detections', 'num_detections']``.
        static_batch: the graph's fixed batch size, or ``None`` when dynamic.
    """

    def __init__(self, model: str | os.PathLike[str] | bytes, threads: int | None = None, **options: Any) -> None:
        self.session = create_session(model, threads, **options)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ExportError(f"expected a graph with one image input, got inputs {[i.name for i in inputs]}")
        inp = inputs[0]
        self.input_name: str = inp.name
        self.input_dtype = np.uint8 if "uint8" in inp.type else np.float32
        self.input_shape: list[Any] = list(inp.shape)
        b = self.input_shape[0] if self.input_shape else None
        self.static_batch: int | None = b if isinstance(b, int) and b > 0 else None
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        self.last_ms: float = 0.0

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        """``images`` uint8 ``[B, 3, H, W]`` -> the graph's outputs, each with leading dim ``B``."""
        x = np.ascontiguousarray(images, dtype=self.input_dtype)
        t0 = time.perf_counter()
        sb = self.static_batch
        if sb is None or x.shape[0] == sb:
            out = self.session.run(None, {self.input_name: x})
        else:
            parts: list[list[np.ndarray]] = []
            for s in range(0, x.shape[0], sb):
                chunk = x[s:s + sb]
                n = chunk.shape[0]
                if n < sb:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], sb - n, axis=0)])
                parts.append([o[:n] for o in self.session.run(None, {self.input_name: chunk})])
            out = [np.concatenate(cols) for cols in zip(*parts)]
        self.last_ms = (time.perf_counter() - t0) * 1e3
        return out

    def outputs_kind(self) -> str:
        """``'raw'``, ``'decoded'`` or ``'nms'`` from the output names (ssdkit's export contract)."""
        return outputs_kind(self.output_names)


def outputs_kind(names: Sequence[str]) -> str:
    """Which ssdkit output contract a list of graph output names follows."""
    from .graph import OUTPUT_NAMES

    for kind, expected in OUTPUT_NAMES.items():
        if list(names) == list(expected):
            return kind
    raise ExportError(
        f"graph outputs {list(names)} are not an ssdkit export; expected one of "
        + ", ".join(f"{list(v)} ({k})" for k, v in OUTPUT_NAMES.items())
    )


def metadata_json(meta: Mapping[str, str], key: str) -> Any:
    """One JSON-encoded ssdkit metadata entry, or ``None``."""
    import json

    v = meta.get(key)
    return None if v is None else json.loads(v)
