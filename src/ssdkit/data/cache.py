"""Decoded-image caches: ``cache='memory'`` and ``cache='hdf5'``.

Both store the decoded RGB images (after normalisation, at their original size) back to back in
one flat ``uint8`` buffer with ``offsets int64 [N]`` and ``shapes int32 [N, 3]``; item ``i`` is
``buffer[offsets[i] : offsets[i] + prod(shapes[i])].reshape(shapes[i])``. Images of any size mix.

- ``memory``: built when the dataset is built (decoding in threads, progress bar), held in a
  shared-memory tensor, so DataLoader workers (fork or spawn) share one copy instead of each
  holding its own. Items are read-only views (transforms never write into their input).
- ``hdf5``: the same layout in one HDF5 file (``pixels``, ``offsets``, ``shapes``, ``paths``),
  the classic speed trick for very large datasets (one file instead of 300k small ones). Built
  once with a progress bar, written to a temporary file in the same folder and renamed into place
  (atomic: an interrupted build never leaves a half file behind), and rebuilt when the source
  changes: the file stores a fingerprint of the image list (paths, byte sizes, modification times)
  and the cache format version as attributes, compared at every dataset build. The file is opened
  lazily in each process (h5py handles do not survive ``fork``).

Default HDF5 location: ``$SSDKIT_CACHE_DIR`` (else ``~/.cache/ssdkit/data``) ``/<name>-<hash>.h5``
where the hash covers the dataset's image folders and name (not the content), so a changed
dataset rebuilds the same file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .io import is_url, list_files, read_image

__all__ = ["MemoryCache", "HDF5Cache", "build_cache", "fingerprint", "default_cache_path", "CACHE_VERSION"]

log = logging.getLogger("ssdkit.data")
CACHE_VERSION = 1
_CHUNK = 1 << 20


def _decode_all(paths: Sequence[str], desc: str) -> Any:
    """Yield decoded images in order, decoding a few ahead in threads (OpenCV releases the GIL)."""
    from tqdm.auto import tqdm

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from tqdm(pool.map(read_image, paths), total=len(paths), desc=desc, unit="img", disable=None)


class _SizeMismatch(Exception):
    """A decoded image's size differs from its header size: rewrite with a growable layout."""


class _Packed:
    """Flat-buffer access shared by both caches."""

    offsets: np.ndarray
    shapes: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)

    def _slice(self, buf: Any, i: int) -> np.ndarray:
        h, w, c = (int(v) for v in self.shapes[i])
        o = int(self.offsets[i])
        return np.asarray(buf[o:o + h * w * c]).reshape(h, w, c)


class MemoryCache(_Packed):
    """All decoded images in one shared-memory ``uint8`` tensor (see the module docstring)."""

    def __init__(self, paths: Sequence[str], desc: str = "caching images in memory") -> None:
        chunks: list[np.ndarray] = []
        shapes = np.zeros((len(paths), 3), dtype=np.int32)
        for i, img in enumerate(_decode_all(paths, desc)):
            shapes[i] = img.shape
            chunks.append(img.reshape(-1))
        sizes = shapes.astype(np.int64).prod(axis=1)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(sizes) else sizes
        self.shapes = shapes
        buf = torch.empty(int(sizes.sum()), dtype=torch.uint8)
        flat = buf.numpy()
        for o, c in zip(self.offsets, chunks):
            flat[o:o + c.size] = c
        try:
            buf = buf.share_memory_()
        except RuntimeError as exc:  # e.g. a small /dev/shm in a container: fork workers still share pages
            log.warning("memory cache not in shared memory (%s); spawn workers will each copy it", exc)
        self.buffer = buf
        self.nbytes = int(sizes.sum())

    def get(self, i: int) -> np.ndarray:
        img = self._slice(self.buffer.numpy(), i)
        img.flags.writeable = False
        return img


class HDF5Cache(_Packed):
    """Decoded images in one HDF5 file (see the module docstring)."""

    def __init__(self, path: str, paths: Sequence[str], fp: str, desc: str = "building HDF5 image cache",
                 sizes: Sequence[tuple[int, int] | None] | None = None) -> None:
        import h5py

        self.path = path
        if not self._valid(path, fp, len(paths)):
            self._build(path, paths, fp, desc, sizes)
        with h5py.File(path, "r") as f:
            self.offsets = f["offsets"][...]
            self.shapes = f["shapes"][...]
        self._file: Any = None
        self._pid = -1

    @staticmethod
    def _valid(path: str, fp: str, n: int) -> bool:
        import h5py

        if not os.path.exists(path):
            return False
        try:
            with h5py.File(path, "r") as f:
                ok = f.attrs.get("fingerprint") == fp and int(f.attrs.get("version", -1)) == CACHE_VERSION
                ok = ok and int(f.attrs.get("n", -1)) == n
        except OSError:
            ok = False
        if not ok:
            log.info("HDF5 image cache %s is stale or unreadable: rebuilding it", path)
        return ok

    @staticmethod
    def _build(path: str, paths: Sequence[str], fp: str, desc: str,
               sizes: Sequence[tuple[int, int] | None] | None = None) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        known = sizes is not None and len(sizes) == len(paths) and all(s is not None for s in sizes)
        try:
            try:
                HDF5Cache._write(tmp, paths, fp, desc, sizes if known else None)  # type: ignore[arg-type]
            except _SizeMismatch:
                HDF5Cache._write(tmp, paths, fp, desc, None)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @staticmethod
    def _write(tmp: str, paths: Sequence[str], fp: str, desc: str,
               sizes: Sequence[tuple[int, int]] | None) -> None:
        """Contiguous ``pixels`` when all sizes are known up front (fastest random reads), else chunked."""
        import h5py

        with h5py.File(tmp, "w") as f:
            if sizes is not None:
                expected = np.array([(h, w, 3) for h, w in sizes], dtype=np.int32).reshape(-1, 3)
                total = int(expected.astype(np.int64).prod(axis=1).sum())
                pix = f.create_dataset("pixels", shape=(total,), dtype=np.uint8)
            else:
                expected = None
                pix = f.create_dataset("pixels", shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(_CHUNK,))
            offsets = np.zeros(len(paths), dtype=np.int64)
            shapes = np.zeros((len(paths), 3), dtype=np.int32)
            end = 0
            for i, img in enumerate(_decode_all(paths, desc)):
                flat = img.reshape(-1)
                if expected is None:
                    pix.resize((end + flat.size,))
                elif tuple(expected[i]) != img.shape:
                    raise _SizeMismatch
                pix[end:end + flat.size] = flat
                offsets[i], shapes[i] = end, img.shape
                end += flat.size
            f.create_dataset("offsets", data=offsets)
            f.create_dataset("shapes", data=shapes)
            f.create_dataset("paths", data=np.array([p.encode("utf-8") for p in paths], dtype=object),
                             dtype=h5py.string_dtype())
            f.attrs["fingerprint"] = fp
            f.attrs["version"] = CACHE_VERSION
            f.attrs["n"] = len(paths)

    def _handle(self) -> Any:
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file["pixels"]

    def get(self, i: int) -> np.ndarray:
        return self._slice(self._handle(), i)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, -1
        return state


def fingerprint(paths: Sequence[str]) -> str:
    """SHA-256 over the image paths in order with their byte sizes and modification times."""
    stats: dict[str, tuple[int, float]] = {}
    by_dir: dict[str, list[str]] = {}
    for p in paths:
        d = p.rsplit("/", 1)[0] if is_url(p) else os.path.dirname(p)
        by_dir.setdefault(d, []).append(p)
    for d, ps in by_dir.items():
        listing = list_files(d)
        for p in ps:
            base = p.rsplit("/", 1)[-1] if is_url(p) else os.path.basename(p)
            stats[p] = listing.get(base, (-1, 0.0))
    h = hashlib.sha256()
    h.update(f"ssdkit-image-cache-v{CACHE_VERSION}\n".encode())
    for p in paths:
        size, mtime = stats[p]
        h.update(json.dumps([p, size, round(mtime, 3)]).encode())
        h.update(b"\n")
    return h.hexdigest()


def default_cache_path(name: str, paths: Sequence[str], cache_dir: str | None = None) -> str:
    from .base import env_cache_dir

    dirs = sorted({(p.rsplit("/", 1)[0] if is_url(p) else os.path.dirname(os.path.abspath(p))) for p in paths})
    key = hashlib.sha1(("\n".join(dirs) + "\n" + name).encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "dataset"
    return os.path.join(os.path.expanduser(cache_dir) if cache_dir else env_cache_dir(), f"{safe}-{key}.h5")


def build_cache(dataset: Any, mode: str, path: str | None = None,
                cache_dir: str | None = None) -> MemoryCache | HDF5Cache:
    """The cache of ``dataset`` (``'memory'`` or ``'hdf5'``), building or reusing it."""
    paths = dataset.fingerprint_items()
    if mode == "memory":
        mem = MemoryCache(paths)
        log.info("%s: %d images cached in memory (%.1f MB)", dataset.name, len(paths), mem.nbytes / 1e6)
        return mem
    if mode == "hdf5":
        if path is not None and is_url(path):
            raise DataError(f"{path}: the HDF5 cache must be a local file (it is read with random access)")
        target = path or default_cache_path(dataset.name, paths, cache_dir)
        sizes = [r.size for r in dataset.records] if hasattr(dataset, "records") else None
        return HDF5Cache(target, paths, fingerprint(paths), sizes=sizes)
    raise DataError(f"unknown cache mode {mode!r}")

