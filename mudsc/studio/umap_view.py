"""Two-dimensional UMAP embedding of units (McInnes et al., 2018, umap-learn), seeded and cached on
disk by a content fingerprint of its input, so the same units give the same picture and are embedded
once.

Units are described by their activations at a fixed set of positions (rows of the input); with the
correlation metric two units are close when their activations are strongly correlated, the
similarity ZipIt! and MuDSC match on. A fixed ``random_state`` makes umap-learn bit-reproducible
(it then runs single-threaded).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from mudsc.atomic import atomic_path, file_lock
from mudsc.errors import ConfigError

METRICS = ("correlation", "cosine", "euclidean")
VERSION = "umap-view-1"  # bump when the embedding of the same input changes


def cache_dir() -> Path:
    """``$MUDSC_HOME/umap`` (``$MUDSC_HOME`` defaulting to ``~/.cache/mudsc``)."""
    return Path(os.environ.get("MUDSC_HOME", "~/.cache/mudsc")).expanduser() / "umap"


def fingerprint(features: np.ndarray, params: dict) -> str:
    """sha256 over the float32 bytes and shape of `features` and the JSON of `params`."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    h = hashlib.sha256(VERSION.encode())
    h.update(repr(x.shape).encode())
    h.update(x.tobytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()


def _check(features: np.ndarray, n_neighbors: int, min_dist: float, metric: str) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) < 4:
        raise ConfigError(f"UMAP needs [n, k] features with at least 4 units, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ConfigError("UMAP features contain NaN or Inf")
    if metric not in METRICS:
        raise ConfigError(f"unknown UMAP metric {metric!r}; choose one of {', '.join(METRICS)}")
    if n_neighbors < 2:
        raise ConfigError(f"UMAP n_neighbors must be at least 2, got {n_neighbors}")
    if not 0.0 <= min_dist <= 1.0:
        raise ConfigError(f"UMAP min_dist must be in [0, 1], got {min_dist}")
    return x


def _entry(x: np.ndarray, seed: int, k: int, min_dist: float, metric: str, directory) -> Path:
    params = {"seed": int(seed), "n_neighbors": k, "min_dist": float(min_dist), "metric": metric}
    root = Path(directory).expanduser() if directory is not None else cache_dir()
    return root / f"{fingerprint(x, params)}.npy"


def embed(features: np.ndarray, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
          metric: str = "correlation", use_cache: bool = True, directory: str | os.PathLike | None = None
          ) -> np.ndarray:
    """[n, k] unit descriptors -> [n, 2] UMAP coordinates (seeded; cached under a fingerprint).

    `n_neighbors` is capped at n - 1. A constant unit (dead: no variance) has no correlation with
    anything, so it is given a tiny seeded jitter rather than making the metric undefined.
    """
    x = _check(features, n_neighbors, min_dist, metric)
    k = int(min(n_neighbors, len(x) - 1))
    if not use_cache:
        return _fit(x, seed, k, min_dist, metric)
    path = _entry(x, seed, k, min_dist, metric, directory)
    with file_lock(path):  # a second process embedding the same units waits and reads the first's entry
        if path.is_file():
            try:
                out = np.load(path, allow_pickle=False)
                if out.shape == (len(x), 2):
                    return out
            except (OSError, ValueError, EOFError):
                pass  # a damaged entry is recomputed and rewritten
        out = _fit(x, seed, k, min_dist, metric)
        with atomic_path(path, size=out.nbytes + 128) as tmp, open(tmp, "wb") as f:  # + the .npy header
            np.save(f, out)
    return out


_compiled: list[bool] = []  # set after the first fit in this process: numba has compiled UMAP's kernels


def embed_reporting(features: np.ndarray, progress: Callable[[str, float], None], **kwargs) -> np.ndarray:
    """:func:`embed` for a background job: says what it does first, since the first UMAP in a process
    spends about 15 s compiling numba code before it embeds anything."""
    progress(f"embedding {len(features)} units" if _compiled else f"compiling UMAP's numba code, then embedding "
             f"{len(features)} units (the first UMAP in this server takes about 15 s)", 0.1)
    out = embed(features, **kwargs)
    progress("done", 1.0)
    return out


def _fit(x: np.ndarray, seed: int, k: int, min_dist: float, metric: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flat = x.std(axis=1) == 0
    if flat.any():
        x = x.copy()
        x[flat] += 1e-6 * rng.standard_normal((int(flat.sum()), x.shape[1])).astype(np.float32)
    import umap

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # seeded UMAP is single-threaded
        warnings.filterwarnings("ignore", message=".*n_neighbors is larger than the dataset.*")
        reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist, metric=metric,
                            random_state=int(seed), init="spectral" if len(x) > k + 1 else "random")
        out = reducer.fit_transform(x).astype(np.float64)
    _compiled.append(True)
    return out


def cached(features: np.ndarray, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
           metric: str = "correlation", directory: str | os.PathLike | None = None) -> bool:
    """Whether :func:`embed` with these arguments would be answered from the disk cache."""
    x = _check(features, n_neighbors, min_dist, metric)
    return _entry(x, seed, int(min(n_neighbors, len(x) - 1)), min_dist, metric, directory).is_file()
