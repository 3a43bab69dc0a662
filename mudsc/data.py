"""Named, seeded image data sets held in memory, and class-subset tasks.

Sources: ``digits`` (scikit-learn's embedded 8x8 digits), ``mnist`` (gzip IDX files or a
torchvision-style root), an ``ImageFolder`` directory, or an ``.npz`` file with ``x`` and ``y``.
Every set is normalised with its own training-split channel statistics; only training batches are
augmented (small random shifts), and every random choice takes a ``torch.Generator``.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from mudsc.errors import DataError, UnknownNameError

DATASETS = ("digits", "mnist", "imagefolder", "npz")
MNIST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Split:
    """Normalised images ``x`` [n, c, h, w] (float32) and labels ``y`` [n] (int64)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, classes: tuple[int, ...]) -> "Split":
        """The examples whose label is in `classes`."""
        keep = torch.isin(self.y, torch.tensor(classes, dtype=self.y.dtype))
        return Split(self.x[keep], self.y[keep])

    def head(self, n: int) -> "Split":
        return Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Dataset:
    """A data set with a fixed train/eval split and the normalisation applied to both."""

    name: str
    train: Split
    eval: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str  # sha256 of the raw source, for manifests and caches
    source: str = ""

    @property
    def in_chans(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def img_size(self) -> int:
        return int(self.train.x.shape[-1])

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "img_size": self.img_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "n_train": len(self.train),
            "n_eval": len(self.eval),
            "sha256": self.fingerprint,
        }


# ----------------------------------------------------------------------------- class subsets

def parse_classes(spec: str | list[int] | tuple[int, ...], num_classes: int) -> tuple[int, ...]:
    """``'0-4'``, ``'5-9'``, ``'odd'``, ``'even'``, ``'all'`` or ``'0,3,7'`` -> sorted class ids."""
    if isinstance(spec, (list, tuple)):
        classes = [int(c) for c in spec]
    else:
        text = str(spec).strip().lower()
        if text in ("", ","):
            raise DataError("class subset is empty: give e.g. '0-4', 'odd' or '0,3,7'")
        if text == "all":
            classes = list(range(num_classes))
        elif text == "odd":
            classes = list(range(1, num_classes, 2))
        elif text == "even":
            classes = list(range(0, num_classes, 2))
        else:
            classes = []
            for part in text.split(","):
                part = part.strip()
                m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
                if m:
                    lo, hi = int(m.group(1)), int(m.group(2))
                    if lo > hi:
                        raise DataError(f"class range {part!r} runs backwards")
                    classes.extend(range(lo, hi + 1))
                elif re.fullmatch(r"\d+", part):
                    classes.append(int(part))
                else:
                    raise DataError(
                        f"malformed class subset {spec!r}: use ranges '0-4', lists '0,3,7', 'odd' or 'even'"
                    )
    if not classes:
        raise DataError(f"class subset {spec!r} is empty")
    bad = [c for c in classes if c < 0 or c >= num_classes]
    if bad:
        raise DataError(f"class subset {spec!r} names classes {bad} outside 0-{num_classes - 1}")
    if len(set(classes)) != len(classes):
        raise DataError(f"class subset {spec!r} repeats a class")
    return tuple(sorted(classes))


def check_tasks(tasks: list[tuple[int, ...]], *, allow_overlap: bool = False) -> None:
    """Tasks must be non-empty and, unless allowed, pairwise disjoint."""
    for i, t in enumerate(tasks):
        if not t:
            raise DataError(f"task {i} has no classes")
    if not allow_overlap:
        for i in range(len(tasks)):
            for j in range(i + 1, len(tasks)):
                common = sorted(set(tasks[i]) & set(tasks[j]))
                if common:
                    raise DataError(f"tasks {i} and {j} overlap in classes {common}")


# ----------------------------------------------------------------------------- loading

def _normalise(train_x: Tensor, eval_x: Tensor) -> tuple[Tensor, Tensor, tuple, tuple]:
    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    norm = lambda x: (x - mean[None, :, None, None]) / std[None, :, None, None]  # noqa: E731
    return norm(train_x), norm(eval_x), tuple(mean.tolist()), tuple(std.tolist())


def _make(name: str, source: str, fp: str, x: Tensor, y: Tensor, train_idx, eval_idx,
          num_classes: int | None = None) -> Dataset:
    if len(x) == 0:
        raise DataError(f"data set {name!r} at {source or 'built-in'} holds no examples")
    tx, ex, mean, std = _normalise(x[train_idx], x[eval_idx])
    k = int(num_classes if num_classes is not None else int(y.max()) + 1)
    return Dataset(name, Split(tx, y[train_idx]), Split(ex, y[eval_idx]), k, mean, std, fp, source)


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    # Fixed split: a seeded permutation, 80% train / 20% eval, independent of any run seed.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_train = int(0.8 * len(y))
    fp = hashlib.sha256(d.images.tobytes()).hexdigest()
    return _make("digits", "sklearn.datasets.load_digits", fp, x, y, perm[:n_train], perm[n_train:], 10)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(raw) < 8:
        raise DataError(f"{path} is truncated (only {len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise DataError(f"{path} is not an IDX uint8 file (magic {magic:#x})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    n = int(np.prod(dims))
    if len(raw) - offset < n:
        raise DataError(f"{path} is truncated: expected {n} values, found {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, count=n, offset=offset).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for d in (root, root / "MNIST" / "raw", root / "raw"):
        for suffix in (".gz", ""):
            p = d / (stem + suffix)
            if p.is_file():
                return p
    return None


def _mnist(data_dir: str | os.PathLike | None) -> Dataset:
    if data_dir is None:
        data_dir = os.environ.get("MUDSC_DATA")
    if data_dir is None:
        raise DataError("mnist needs a directory: pass --data-dir DIR or set MUDSC_DATA")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"mnist data directory {root} does not exist")
    test = [_find(root, s) for s in MNIST_FILES]
    if None in test:
        raise DataError(
            f"{root} has no MNIST files: expected {MNIST_FILES[0]}[.gz] and {MNIST_FILES[1]}[.gz] "
            "(or a torchvision root with MNIST/raw/)"
        )
    xt, yt = _read_idx(test[0]), _read_idx(test[1])
    if len(xt) != len(yt):
        raise DataError(f"MNIST images ({len(xt)}) and labels ({len(yt)}) differ in count")
    h = hashlib.sha256()
    for p in test:
        h.update(p.read_bytes())
    train = [_find(root, s) for s in MNIST_TRAIN_FILES]
    if None not in train:
        xr, yr = _read_idx(train[0]), _read_idx(train[1])
        for p in train:
            h.update(p.read_bytes())
        x = np.concatenate([xr, xt])
        y = np.concatenate([yr, yt])
        train_idx, eval_idx = np.arange(len(xr)), np.arange(len(xr), len(x))
    else:
        # Only the 10k test set: the first 8,000 images train, the last 2,000 evaluate.
        x, y = xt, yt
        n_train = int(round(0.8 * len(x)))
        train_idx, eval_idx = np.arange(n_train), np.arange(n_train, len(x))
    xs = torch.from_numpy(x.astype(np.float32) / 255.0)[:, None]
    ys = torch.from_numpy(y.astype(np.int64))
    return _make("mnist", str(root), h.hexdigest(), xs, ys, torch.from_numpy(train_idx),
                 torch.from_numpy(eval_idx), 10)


def _image_folder(root: Path) -> Dataset:
    from PIL import Image

    if not root.is_dir():
        raise DataError(f"ImageFolder directory {root} does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    splits = [root / "train", root / "val"] if {"train", "val"} <= {p.name for p in class_dirs} else None
    h = hashlib.sha256()

    def read(d: Path, names: list[str] | None) -> tuple[list[np.ndarray], list[int], list[str]]:
        dirs = sorted(p for p in d.iterdir() if p.is_dir())
        names = names or [p.name for p in dirs]
        xs, ys = [], []
        for label, name in enumerate(names):
            for f in sorted((d / name).iterdir()) if (d / name).is_dir() else []:
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    with Image.open(f) as im:
                        xs.append(np.asarray(im.convert("L" if im.mode in ("L", "1", "P") else "RGB")))
                except OSError as e:
                    raise DataError(f"cannot read image {f}: {e}") from None
                h.update(f.read_bytes())
                ys.append(label)
        return xs, ys, names

    if splits:
        xtr, ytr, names = read(splits[0], None)
        xev, yev, _ = read(splits[1], names)
        xs, ys = xtr + xev, ytr + yev
        train_idx = torch.arange(len(xtr))
        eval_idx = torch.arange(len(xtr), len(xs))
    else:
        if not class_dirs:
            raise DataError(f"ImageFolder {root} has no class sub-directories")
        xs, ys, names = read(root, None)
        perm = torch.randperm(len(ys), generator=torch.Generator().manual_seed(0))
        n_train = int(0.8 * len(ys))
        train_idx, eval_idx = perm[:n_train], perm[n_train:]
    if not xs:
        raise DataError(f"ImageFolder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        raise DataError(f"ImageFolder {root} mixes image sizes {sorted(shapes)[:3]}; resize them first")
    arr = np.stack(xs).astype(np.float32) / 255.0
    x = torch.from_numpy(arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2))
    y = torch.tensor(ys, dtype=torch.int64)
    return _make("imagefolder", str(root), h.hexdigest(), x, y, train_idx, eval_idx, len(names))


def _npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise DataError(f"{path} lacks arrays {missing} (found {f.files})")
            x, y = f["x"], f["y"]
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} examples but y has {len(y)}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise DataError(f"{path}: x must be [n, h, w], [n, h, w, c] or [n, c, h, w], got {x.shape}")
    x = x.astype(np.float32)
    if x.max() > 1.5:
        x = x / 255.0
    xs, ys = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))
    perm = torch.randperm(len(ys), generator=torch.Generator().manual_seed(0))
    n_train = int(0.8 * len(ys))
    fp = hashlib.sha256(path.read_bytes()).hexdigest()
    return _make("npz", str(path), fp, xs, ys, perm[:n_train], perm[n_train:])


_CACHE: dict[tuple[str, str], Dataset] = {}


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """A data set by name (``digits``, ``mnist``), or by path (ImageFolder directory, ``.npz``)."""
    key = (name, str(data_dir))
    if key in _CACHE:
        return _CACHE[key]
    if name == "digits":
        ds = _digits()
    elif name == "mnist":
        ds = _mnist(data_dir)
    elif name in ("imagefolder", "npz"):
        if data_dir is None:
            raise DataError(f"data set {name!r} needs --data-dir")
        p = Path(data_dir).expanduser()
        ds = _npz(p) if name == "npz" else _image_folder(p)
    elif name.endswith(".npz"):
        ds = _npz(Path(name).expanduser())
    elif Path(name).expanduser().is_dir():
        ds = _image_folder(Path(name).expanduser())
    else:
        import difflib

        close = difflib.get_close_matches(name, DATASETS, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownNameError(
            f"unknown data set {name!r}{hint}; choose one of {', '.join(DATASETS)} or give a path"
        )
    _CACHE[key] = ds
    return ds


# ----------------------------------------------------------------------------- batches

def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """[b, c, h, w] -> [b, c, h, w]: each image moved by up to `max_shift` pixels, zero-padded."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    pad = torch.nn.functional.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).clamp_max(h + 2 * max_shift - 1)
    cols = (dx[:, None] + torch.arange(w)[None]).clamp_max(w + 2 * max_shift - 1)
    idx_b = torch.arange(b)[:, None, None]
    out = pad.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def batches(split: Split, batch_size: int, *, shuffle: bool = False, augment: bool = False,
            generator: torch.Generator | None = None, max_shift: int | None = None,
            drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of a split; shuffling and shifting draw only from `generator`."""
    if batch_size <= 0:
        raise DataError(f"batch size must be positive, got {batch_size}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n = len(split)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    shift = max_shift if max_shift is not None else max(1, split.x.shape[-1] // 14)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        x = split.x[idx]
        if augment:
            x = random_shift(x, shift, g)
        yield x, split.y[idx]
