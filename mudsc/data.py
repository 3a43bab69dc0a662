"""Named, seeded image data sets held in memory, and class-subset tasks.

Sources: ``digits`` (scikit-learn's embedded 8x8 digits), ``mnist`` (gzip IDX files or a
torchvision-style root), ``cifar10`` and ``cifar100`` (the official binary or Python batches, or a
torchvision-style root), an ``ImageFolder`` directory, or an ``.npz`` file with ``x`` and ``y``.
Every set is normalised with its own training-split channel statistics; only training batches are
augmented (small random shifts), and every random choice takes a ``torch.Generator``. Any set can be
loaded at a given image size (``img_size``: torchvision's ``Resize`` then ``CenterCrop``, before the
normalisation), which is how an ImageFolder of mixed sizes loads at all.
"""
from __future__ import annotations

import _compat_pickle
import gzip
import hashlib
import io
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from mudsc.errors import DataError, UnknownNameError

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "imagefolder", "npz")
NAMED = ("digits", "mnist", "cifar10", "cifar100")  # loaded by name; the others by their path
MNIST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GREY_MODES = ("L", "1", "LA", "I", "I;16", "F")  # read as one channel; every other mode (palette too) as RGB


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


def absolute(path: str | os.PathLike) -> Path:
    """`path` with ``~`` expanded, made absolute: what a manifest records, so that it reproduces its merge
    from any working directory."""
    return Path(path).expanduser().resolve()


def reload_name(name: str, source: str) -> str:
    """A named set's name, else its source path: what :func:`load_dataset` takes to load it again."""
    return name if name in NAMED else source


@dataclass(frozen=True)
class Dataset:
    """A data set with a fixed train/eval split and the normalisation applied to both."""

    name: str
    train: Split
    eval: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str  # sha256 of the raw source (and of the load-time size), for manifests and caches
    source: str = ""
    resized_to: int | None = None  # the load-time size (load_dataset's img_size); None: images as stored

    @property
    def in_chans(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def img_size(self) -> int:
        """The images' width (their side, for the square images of the named sets)."""
        return int(self.train.x.shape[-1])

    @property
    def img_hw(self) -> tuple[int, int]:
        """The images' height and width (an ImageFolder or ``.npz`` may hold non-square images)."""
        return int(self.train.x.shape[-2]), int(self.train.x.shape[-1])

    @property
    def reload_name(self) -> str:
        """What :func:`load_dataset` takes to load this set again (with the same data directory)."""
        return reload_name(self.name, self.source)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "img_size": self.img_size,
            "img_hw": list(self.img_hw),
            "mean": list(self.mean),
            "std": list(self.std),
            "n_train": len(self.train),
            "n_eval": len(self.eval),
            "sha256": self.fingerprint,
            "resized_to": self.resized_to,
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


def task_label(classes: tuple[int, ...] | list[int]) -> str:
    """A task as every page, table and figure shows it, and as :func:`parse_classes` reads it back:
    ``(0, 1, 2, 3, 4)`` -> ``'0-4'``; non-contiguous tasks are listed, ``'0,3,7'``."""
    cs = sorted(int(c) for c in classes)
    if len(cs) > 2 and cs == list(range(cs[0], cs[-1] + 1)):
        return f"{cs[0]}-{cs[-1]}"
    return ",".join(map(str, cs))


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


def union_classes(tasks: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The sorted classes of all `tasks` together."""
    return tuple(sorted({c for t in tasks for c in t}))


def union_train(data: Dataset, tasks: Sequence[tuple[int, ...]], *, seed: int = 0) -> Split:
    """The training images of the union of `tasks`, in an order seeded by `seed`: what merges compute
    activation statistics and BatchNorm resets on."""
    train = data.train.subset(union_classes(tasks))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return Split(train.x[order], train.y[order])


# ----------------------------------------------------------------------------- loading

class ResizeCrop:
    """torchvision's ``Resize(size)`` then ``CenterCrop(size)`` on float [b, c, h, w] images of side
    (`h`, `w`): bilinear with antialiasing, as torchvision resizes tensors.

    The geometry is fixed when built, so the same object serves the data loaders and a parent's
    :class:`~mudsc.models.preprocess.Preprocess`, which torch.fx must trace as constant-shaped ops.
    """

    def __init__(self, hw: tuple[int, int], size: int) -> None:
        h, w = (int(v) for v in hw)
        self.hw, self.size = (h, w), int(size)
        # Resize(size): the shorter side becomes `size`, the other is rounded down; CenterCrop(size)
        # takes the middle square, its offsets rounded as torchvision rounds them.
        self.resized = (self.size, int(self.size * w / h)) if h <= w else (int(self.size * h / w), self.size)
        self.top = int(round((self.resized[0] - self.size) / 2.0))
        self.left = int(round((self.resized[1] - self.size) / 2.0))

    def __call__(self, x: Tensor) -> Tensor:
        if self.resized != self.hw:
            x = torch.nn.functional.interpolate(x, size=self.resized, mode="bilinear", align_corners=False,
                                                antialias=True)
        if self.resized != (self.size, self.size):
            x = x[:, :, self.top:self.top + self.size, self.left:self.left + self.size]
        return x


def _check_size(img_size: int | None) -> int | None:
    if img_size is None:
        return None
    if isinstance(img_size, bool) or int(img_size) != img_size or int(img_size) <= 0:
        raise DataError(f"--data-img-size must be a positive whole number, got {img_size!r}")
    return int(img_size)


def _resize_crop(x: Tensor, size: int | None, chunk: int = 1024) -> Tensor:
    """[n, c, h, w] -> [n, c, size, size] (`x` itself when `size` is None or already its side), a chunk
    at a time so that only the result is held, never the resized images before cropping."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    op = ResizeCrop(tuple(x.shape[-2:]), size)
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=x.dtype)
    for i in range(0, len(x), chunk):
        out[i:i + chunk] = op(x[i:i + chunk])
    return out


def _normalise(train_x: Tensor, eval_x: Tensor) -> tuple[Tensor, Tensor, tuple, tuple]:
    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    # In place after the subtraction: one new tensor per split, not two (CIFAR's train split is 600 MB).
    norm = lambda x: (x - mean[None, :, None, None]).div_(std[None, :, None, None])  # noqa: E731
    return norm(train_x), norm(eval_x), tuple(mean.tolist()), tuple(std.tolist())


def _make(name: str, source: str, fp: str, x: Tensor, y: Tensor, train_idx, eval_idx,
          num_classes: int | None = None, img_size: int | None = None) -> Dataset:
    """The data set of images `x` in [0, 1], resized and centre-cropped to `img_size` first if given,
    then normalised. The size joins the fingerprint: statistics cached at one size are not another's."""
    if len(x) == 0:
        raise DataError(f"data set {name!r} at {source or 'built-in'} holds no examples")
    x = _resize_crop(x, img_size)
    if img_size is not None:
        fp = hashlib.sha256(f"{fp}|img_size={img_size}".encode()).hexdigest()
    tx, ex, mean, std = _normalise(x[train_idx], x[eval_idx])
    k = int(num_classes if num_classes is not None else int(y.max()) + 1)
    return Dataset(name, Split(tx, y[train_idx]), Split(ex, y[eval_idx]), k, mean, std, fp, source, img_size)


def _digits(img_size: int | None = None) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    # Fixed split: a seeded permutation, 80% train / 20% eval, independent of any run seed.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_train = int(0.8 * len(y))
    fp = hashlib.sha256(d.images.tobytes()).hexdigest()
    return _make("digits", "sklearn.datasets.load_digits", fp, x, y, perm[:n_train], perm[n_train:], 10, img_size)


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


def _data_root(name: str, data_dir: str | os.PathLike | None) -> Path:
    """`data_dir`, else ``$MUDSC_DATA``, as an existing directory."""
    if data_dir is None:
        data_dir = os.environ.get("MUDSC_DATA")
    if data_dir is None:
        raise DataError(f"{name} needs a directory: pass --data-dir DIR or set MUDSC_DATA")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{name} data directory {root} does not exist")
    return root


def _mnist(data_dir: str | os.PathLike | None, img_size: int | None = None) -> Dataset:
    root = _data_root("mnist", data_dir)
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
                 torch.from_numpy(eval_idx), 10, img_size)


@dataclass(frozen=True)
class _CifarSpec:
    """Where one CIFAR release keeps its batches, in its binary and its Python version."""

    title: str
    bin_dir: str
    py_dir: str
    bin_train: tuple[str, ...]
    bin_test: str
    py_train: tuple[str, ...]
    py_test: str
    label_bytes: int  # bytes before a binary record's pixels; the (fine) label is the last of them
    label_key: str  # the Python batch's label list
    num_classes: int
    archives: tuple[str, ...]


_CIFAR = {
    "cifar10": _CifarSpec(
        "CIFAR-10", "cifar-10-batches-bin", "cifar-10-batches-py",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin",
        tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
        1, "labels", 10, ("cifar-10-binary.tar.gz", "cifar-10-python.tar.gz")),
    "cifar100": _CifarSpec(
        "CIFAR-100", "cifar-100-binary", "cifar-100-python", ("train.bin",), "test.bin", ("train",), "test",
        2, "fine_labels", 100, ("cifar-100-binary.tar.gz", "cifar-100-python.tar.gz")),
}
CIFAR_PIXELS = 3 * 32 * 32  # one record: red, green, blue planes, each 32x32 row-major


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes, and only that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as Python 3 protocol-2 pickles use it for ``b""``; ``bytes(n)`` would allocate n."""
    if args:
        raise pickle.UnpicklingError(f"bytes called with {len(args)} argument(s)")
    return b""


def _pickle_globals() -> dict[tuple[str, str], object]:
    try:  # numpy >= 2 pickles arrays under numpy._core, 1.x under numpy.core; accept both names
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1,
        ("builtins", "bytes"): _empty_bytes,
    }


class _BatchUnpickler(pickle.Unpickler):
    """Loads a CIFAR Python batch: numpy arrays, lists, dicts and bytes; any other global is refused.

    A pickle can name any callable and have it called while loading, so a downloaded batch is only
    trusted to rebuild what the official files hold.
    """

    def __init__(self, raw: bytes, path: Path):
        super().__init__(io.BytesIO(raw), encoding="bytes")  # written by Python 2 cPickle
        self.path = path
        self.allowed = _pickle_globals()

    def find_class(self, module: str, name: str) -> object:
        # Python 2 spells some modules differently (__builtin__); map them as pickle's fix_imports does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = self.allowed.get((module, name))
        if found is None:
            raise DataError(f"{self.path}: refused to unpickle {module}.{name} "
                            "(only numpy arrays, lists and dicts are allowed)")
        return found


def _entry(d: dict, key: str, path: Path):
    # The official files have bytes keys; a batch re-saved from Python 3 may have str keys.
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{path} has no {key!r} entry (found {sorted(map(str, d))})")


def _cifar_py_batch(path: Path, spec: _CifarSpec) -> tuple[np.ndarray, np.ndarray, bytes]:
    """One Python batch -> uint8 pixels [n, 3072], labels [n] and the file's bytes."""
    raw = path.read_bytes()
    try:
        d = _BatchUnpickler(raw, path).load()
    except DataError:
        raise
    except Exception as e:  # a damaged pickle fails in many ways (EOF, bad opcode, bad array state)
        raise DataError(f"cannot unpickle {path}: {type(e).__name__}: {e}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} holds a {type(d).__name__}, not a {spec.title} batch dict")
    x = _entry(d, "data", path)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != CIFAR_PIXELS:
        what = f"{x.dtype} array {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array [n, {CIFAR_PIXELS}], got {what}")
    try:
        y = np.asarray(_entry(d, spec.label_key, path), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {spec.label_key!r} is not a list of integers ({e})") from None
    if len(y) != len(x):
        raise DataError(f"{path}: {len(x)} images but {len(y)} {spec.label_key!r}")
    return x, y, raw


def _cifar_bin_batch(path: Path, spec: _CifarSpec) -> tuple[np.ndarray, np.ndarray, bytes]:
    """One binary batch -> uint8 pixels [n, 3072], labels [n] and the file's bytes."""
    raw = path.read_bytes()
    size = spec.label_bytes + CIFAR_PIXELS
    if not raw or len(raw) % size:
        raise DataError(f"{path} is truncated or not a {spec.title} binary batch: "
                        f"{len(raw)} bytes is not a whole number of {size}-byte records")
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, size)
    return rec[:, spec.label_bytes:], rec[:, spec.label_bytes - 1].astype(np.int64), raw


def _cifar_folder(root: Path, spec: _CifarSpec) -> tuple[Path, bool]:
    """The folder holding the batches (`root` itself or its official sub-folder), and whether binary."""
    for folder in (root / spec.bin_dir, root / spec.py_dir, root):  # binary first: nothing to unpickle
        for binary, names in ((True, spec.bin_train + (spec.bin_test,)), (False, spec.py_train + (spec.py_test,))):
            if any((folder / n).is_file() for n in names):
                return folder, binary
    archives = [a for a in spec.archives if (root / a).is_file()]
    hint = f"; extract {archives[0]} there first" if archives else ""
    raise DataError(f"no {spec.title} files under {root}: expected {spec.bin_dir}/ or {spec.py_dir}/{hint}")


def _cifar(name: str, data_dir: str | os.PathLike | None, img_size: int | None = None) -> Dataset:
    """CIFAR-10 or CIFAR-100 (fine labels): the official training batches train, the test batch evaluates.

    `data_dir` is the extracted folder or a directory containing it (a torchvision root). The training
    batches present are taken in order (the release has all five of CIFAR-10's); the first and the
    test batch are required.
    """
    spec = _CIFAR[name]
    folder, binary = _cifar_folder(_data_root(name, data_dir), spec)
    train_names, test_name = (spec.bin_train, spec.bin_test) if binary else (spec.py_train, spec.py_test)
    missing = [n for n in (train_names[0], test_name) if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder} lacks {' and '.join(missing)} ({spec.title} "
                        f"{'binary' if binary else 'Python'} version)")
    read = _cifar_bin_batch if binary else _cifar_py_batch
    paths = [folder / n for n in train_names if (folder / n).is_file()] + [folder / test_name]
    h = hashlib.sha256()
    xs, ys = [], []
    for p in paths:
        px, labels, raw = read(p, spec)
        bad = labels[(labels < 0) | (labels >= spec.num_classes)]
        if len(bad):
            raise DataError(f"{p}: label {int(bad[0])} is outside 0-{spec.num_classes - 1}; "
                            f"is this a {spec.title} file?")
        h.update(raw)
        xs.append(px)
        ys.append(labels)
    n_train = sum(len(labels) for labels in ys[:-1])
    # One copy into a contiguous uint8 block, then one conversion (50k train images are 600 MB as
    # float); the files' bytes, which binary records are views of, go as soon as they are copied.
    pixels = np.concatenate(xs).reshape(-1, 3, 32, 32)
    del xs, px, raw
    x = torch.from_numpy(pixels).to(torch.float32).div_(255.0)
    del pixels
    y = torch.from_numpy(np.concatenate(ys))
    # Slices, not index tensors: the splits are views of `x`, not a second copy of it.
    return _make(name, str(folder), h.hexdigest(), x, y, slice(0, n_train), slice(n_train, len(y)),
                 spec.num_classes, img_size)


def _image_folder(root: Path, img_size: int | None = None) -> Dataset:
    """One class per sub-directory (of ``train/`` and ``val/`` when both exist, else an 80/20 split).
    With `img_size` each image is resized and centre-cropped as it is read, so sizes may mix."""
    from PIL import Image

    if not root.is_dir():
        raise DataError(f"ImageFolder directory {root} does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    splits = [root / "train", root / "val"] if {"train", "val"} <= {p.name for p in class_dirs} else None
    h = hashlib.sha256()

    def pixels(im) -> Tensor:
        """[c, h, w]: uint8 as stored, or float in [0, 1] resized to `img_size` (the originals not kept)."""
        a = torch.from_numpy(np.array(im.convert("L" if im.mode in GREY_MODES else "RGB")))
        a = a[None] if a.ndim == 2 else a.permute(2, 0, 1)
        if img_size is None:
            return a
        return ResizeCrop(tuple(a.shape[-2:]), img_size)(a[None].float().div_(255.0))[0]

    def read(d: Path, names: list[str] | None) -> tuple[list[Tensor], list[int], list[str]]:
        dirs = sorted(p for p in d.iterdir() if p.is_dir())
        names = names or [p.name for p in dirs]
        xs, ys = [], []
        for label, name in enumerate(names):
            for f in sorted((d / name).iterdir()) if (d / name).is_dir() else []:
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    with Image.open(f) as im:
                        xs.append(pixels(im))
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
    if len({a.shape[0] for a in xs}) > 1:  # a few grey photos in a colour set (ImageNet has some): as RGB
        xs = [a.expand(3, *a.shape[1:]) for a in xs]
    shapes = {tuple(a.shape[1:]) for a in xs}
    if len(shapes) > 1:
        raise DataError(f"ImageFolder {root} mixes image sizes {sorted(shapes)[:3]} (height, width); give "
                        "--data-img-size N to resize and centre-crop every image to N x N as it loads")
    x = torch.stack(xs)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
    y = torch.tensor(ys, dtype=torch.int64)
    return _make("imagefolder", str(root), h.hexdigest(), x, y, train_idx, eval_idx, len(names), img_size)


def _npz(path: Path, img_size: int | None = None) -> Dataset:
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
    return _make("npz", str(path), fp, xs, ys, perm[:n_train], perm[n_train:], img_size=img_size)


_CACHE: dict[tuple[str, str, int | None], Dataset] = {}


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, img_size: int | None = None) -> Dataset:
    """A data set by name (``digits``, ``mnist``, ``cifar10``, ``cifar100``), or by path (ImageFolder
    directory, ``.npz``).

    `img_size` resizes every image's shorter side to it and centre-crops it square (torchvision's
    ``Resize`` + ``CenterCrop``) before normalising: the CLI's ``--data-img-size``. Unlike a parent's
    ``--img-size``, which resizes inside that parent only, it changes the data set every parent sees.
    """
    img_size = _check_size(img_size)
    key = (name, str(data_dir), img_size)
    if key in _CACHE:
        return _CACHE[key]
    if name == "digits":
        ds = _digits(img_size)
    elif name == "mnist":
        ds = _mnist(data_dir, img_size)
    elif name in _CIFAR:
        ds = _cifar(name, data_dir, img_size)
    elif name in ("imagefolder", "npz"):
        if data_dir is None:
            raise DataError(f"data set {name!r} needs --data-dir")
        p = absolute(data_dir)
        ds = _npz(p, img_size) if name == "npz" else _image_folder(p, img_size)
    elif name.endswith(".npz"):
        ds = _npz(absolute(name), img_size)
    elif Path(name).expanduser().is_dir():
        ds = _image_folder(absolute(name), img_size)
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
            drop_last: bool = False, progress: Callable[[int, int], None] | None = None
            ) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of a split; shuffling and shifting draw only from `generator`.
    `progress(done_examples, total)` before the first batch (0) and once the consumer has finished with
    each batch (a bar's clock then starts with the stage, not after its first batch)."""
    if batch_size <= 0:
        raise DataError(f"batch size must be positive, got {batch_size}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n = len(split)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    shift = max_shift if max_shift is not None else max(1, split.x.shape[-1] // 14)
    stop = n - n % batch_size if drop_last else n
    if progress is not None and stop:
        progress(0, stop)
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        x = split.x[idx]
        if augment:
            x = random_shift(x, shift, g)
        yield x, split.y[idx]
        if progress is not None:  # the generator resumes once the consumer's loop body has run
            progress(i + len(idx), stop)
