"""CIFAR-10/100 from small fake files written in the official binary and Python layouts."""
import io
import os
import pickle
import struct
from typing import ClassVar

import numpy as np
import pytest
import torch

from mudsc.data import DATASETS, load_dataset
from mudsc.errors import DataError, UnknownNameError

PIXELS = 3 * 32 * 32


def records(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded uint8 pixels [n, 3072] and labels [n]."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, PIXELS), dtype=np.uint8), rng.integers(0, num_classes, n).astype(np.uint8)


# Two training batches of 20 records and a test batch of 10, shared by every layout.
BATCHES = [records(20, 100, 1), records(20, 100, 2)]
TEST = records(10, 100, 3)
BATCHES[0][0][0] = np.arange(PIXELS) % 251  # a record whose every byte says where it sits


def coarse(fine: np.ndarray) -> np.ndarray:
    return (fine // 5).astype(np.uint8)


def write_bin(folder, name, x, y, cifar100=False):
    labels = np.stack([coarse(y), y], 1) if cifar100 else y[:, None]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(np.concatenate([labels, x], 1).tobytes())


def write_py(folder, name, x, y, cifar100=False, batch_label=b"training batch"):
    d = {b"batch_label": batch_label, b"data": x, b"filenames": [b"img_%d.png" % i for i in range(len(x))]}
    if cifar100:
        d.update({b"fine_labels": [int(v) for v in y], b"coarse_labels": [int(v) for v in coarse(y)]})
    else:
        d[b"labels"] = [int(v) for v in y]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "wb") as f:
        pickle.dump(d, f, protocol=2)


def cifar10(root, layout):
    """root/cifar-10-batches-{bin,py}/ with data_batch_1, data_batch_2 and test_batch."""
    if layout == "bin":
        folder = root / "cifar-10-batches-bin"
        for i, (x, y) in enumerate(BATCHES, 1):
            write_bin(folder, f"data_batch_{i}.bin", x, y % 10)
        write_bin(folder, "test_batch.bin", TEST[0], TEST[1] % 10)
    else:
        folder = root / "cifar-10-batches-py"
        for i, (x, y) in enumerate(BATCHES, 1):
            write_py(folder, f"data_batch_{i}", x, y % 10)
        write_py(folder, "test_batch", TEST[0], TEST[1] % 10, batch_label=b"")  # b"" pickles as bytes()
    return folder


def cifar100(root, layout):
    """root/cifar-100-{binary,python}/ with train and test (the two training batches as one file)."""
    x = np.concatenate([b[0] for b in BATCHES])
    y = np.concatenate([b[1] for b in BATCHES])
    if layout == "bin":
        folder = root / "cifar-100-binary"
        write_bin(folder, "train.bin", x, y, True)
        write_bin(folder, "test.bin", *TEST, True)
    else:
        folder = root / "cifar-100-python"
        write_py(folder, "train", x, y, True)
        write_py(folder, "test", *TEST, True)
    return folder


def raw_images(ds, split):
    """A split's images with the normalisation undone, back in [0, 1]."""
    mean = torch.tensor(ds.mean)[None, :, None, None]
    std = torch.tensor(ds.std)[None, :, None, None]
    return split.x * std + mean


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_cifar10_round_trip(tmp_path, layout):
    cifar10(tmp_path, layout)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.num_classes == 10 and ds.in_chans == 3 and ds.img_size == 32
    assert ds.train.x.shape == (40, 3, 32, 32) and ds.eval.x.shape == (10, 3, 32, 32)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    # Train = the training batches in order, eval = the test batch.
    assert ds.train.y.tolist() == [int(v) % 10 for b in BATCHES for v in b[1]]
    assert ds.eval.y.tolist() == [int(v) % 10 for v in TEST[1]]
    want = np.concatenate([b[0] for b in BATCHES]).reshape(-1, 3, 32, 32) / 255.0
    assert torch.allclose(raw_images(ds, ds.train), torch.from_numpy(want).float(), atol=1e-5)
    assert torch.allclose(raw_images(ds, ds.eval), torch.from_numpy(TEST[0].reshape(-1, 3, 32, 32) / 255.0).float(),
                          atol=1e-5)
    # Planes red, green, blue, each row-major: channel 1, row 2, column 3 is byte 1024 + 2 * 32 + 3.
    assert abs(float(raw_images(ds, ds.train)[0, 1, 2, 3]) - (1024 + 67) % 251 / 255.0) < 1e-5
    # Normalised with the training split's own statistics.
    assert torch.allclose(ds.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert ds.describe()["n_train"] == 40 and len(ds.fingerprint) == 64


def test_layouts_agree_and_folder_itself_works(tmp_path):
    folders = {layout: cifar10(tmp_path / layout, layout) for layout in ("bin", "py")}
    a = load_dataset("cifar10", tmp_path / "bin")
    b = load_dataset("cifar10", folders["py"])  # the extracted folder itself, not its parent
    assert a.source == str(folders["bin"]) and b.source == str(folders["py"])
    for sa, sb in ((a.train, b.train), (a.eval, b.eval)):
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
    assert a.mean == b.mean and a.std == b.std
    assert a.fingerprint != b.fingerprint  # sha256 of the raw files, which differ between layouts


def test_reload_is_deterministic_and_fingerprint_tracks_bytes(tmp_path):
    from mudsc.data import _cifar

    folder = cifar10(tmp_path, "bin")
    a, b = _cifar("cifar10", tmp_path), _cifar("cifar10", tmp_path)  # bypassing the in-process cache
    assert torch.equal(a.train.x, b.train.x) and a.fingerprint == b.fingerprint
    data = bytearray((folder / "test_batch.bin").read_bytes())
    data[5] ^= 1
    (folder / "test_batch.bin").write_bytes(bytes(data))
    assert _cifar("cifar10", tmp_path).fingerprint != a.fingerprint


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_cifar100_uses_fine_labels(tmp_path, layout):
    cifar100(tmp_path, layout)
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.train.x.shape == (40, 3, 32, 32) and len(ds.eval) == 10
    assert ds.train.y.tolist() == [int(v) for b in BATCHES for v in b[1]]
    assert ds.eval.y.tolist() == TEST[1].tolist()
    want = np.concatenate([b[0] for b in BATCHES]).reshape(-1, 3, 32, 32) / 255.0
    assert torch.allclose(raw_images(ds, ds.train), torch.from_numpy(want).float(), atol=1e-5)


def test_cifar100_layouts_agree(tmp_path):
    for layout in ("bin", "py"):
        cifar100(tmp_path / layout, layout)
    a, b = load_dataset("cifar100", tmp_path / "bin"), load_dataset("cifar100", tmp_path / "py")
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.eval.y, b.eval.y)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 files under .*: expected cifar-10-batches-bin/ or "
                                        "cifar-10-batches-py/$"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="no CIFAR-100 files .*extract cifar-100-python.tar.gz there first"):
        load_dataset("cifar100", tmp_path)
    with pytest.raises(DataError, match="cifar10 data directory .* does not exist"):
        load_dataset("cifar10", tmp_path / "nope")
    folder = cifar10(tmp_path / "partial", "py")
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="cifar-10-batches-py lacks test_batch \\(CIFAR-10 Python version\\)"):
        load_dataset("cifar10", tmp_path / "partial")
    folder = cifar10(tmp_path / "nofirst", "bin")
    (folder / "data_batch_1.bin").unlink()
    with pytest.raises(DataError, match="lacks data_batch_1.bin \\(CIFAR-10 binary version\\)"):
        load_dataset("cifar10", tmp_path / "nofirst")


def test_damaged_files_are_refused(tmp_path):
    folder = cifar10(tmp_path / "short", "bin")
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes()[:-1])
    with pytest.raises(DataError, match="test_batch.bin is truncated .* 3073-byte records"):
        load_dataset("cifar10", tmp_path / "short")
    folder = cifar10(tmp_path / "cut", "py")
    (folder / "data_batch_2").write_bytes((folder / "data_batch_2").read_bytes()[:1000])
    with pytest.raises(DataError, match="cannot unpickle .*data_batch_2"):
        load_dataset("cifar10", tmp_path / "cut")
    folder = cifar10(tmp_path / "labels", "bin")
    write_bin(folder, "test_batch.bin", TEST[0], TEST[1] + 10)  # CIFAR-100-sized labels
    with pytest.raises(DataError, match="test_batch.bin: label .* is outside 0-9"):
        load_dataset("cifar10", tmp_path / "labels")


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2's 8-bit strings (BINSTRING), as cPickle wrote the real batches."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(raw)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + raw)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_py2_string


def test_python2_style_pickle_loads(tmp_path):
    folder = cifar10(tmp_path, "py")
    x, y = BATCHES[0]
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({b"batch_label": b"training batch 1 of 5", b"labels": [int(v) % 10 for v in y],
                                        b"data": x, b"filenames": [b"a.png"] * len(x)})
    # numpy 1.x (and the Python 2 numpy that wrote CIFAR) names numpy.core, not numpy._core.
    data = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in data and b"_codecs" not in data
    (folder / "data_batch_1").write_bytes(data)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train.y[:20].tolist() == [int(v) % 10 for v in y]
    got = raw_images(ds, ds.train)[:20]
    assert torch.allclose(got, torch.from_numpy(x.reshape(-1, 3, 32, 32) / 255.0).float(), atol=1e-5)


class _RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "eval"])
def test_pickle_with_code_is_refused_and_not_run(tmp_path, how):
    folder = cifar10(tmp_path, "py")
    marker = tmp_path / "hacked"
    evil = (_RunsCode(os.system, f"touch {marker}") if how == "os.system"
            else _RunsCode(eval, f"__import__('pathlib').Path({str(marker)!r}).touch()"))
    x, y = BATCHES[0]
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": x, b"labels": [int(v) % 10 for v in y], b"extra": evil}, f, protocol=2)
    refused = r"\w+\.system" if how == "os.system" else r"builtins\.eval"
    with pytest.raises(DataError, match=rf"cifar-10-batches-py/data_batch_1: refused to unpickle {refused} "
                                        r"\(only numpy arrays, lists and dicts are allowed\)"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_listed_and_suggested():
    assert {"cifar10", "cifar100"} <= set(DATASETS)
    with pytest.raises(UnknownNameError, match="did you mean cifar10"):
        load_dataset("cifar-10")


def test_named_sets_reload_by_name_with_their_directory(tmp_path):
    from mudsc.data import reload_name

    cifar10(tmp_path, "bin")
    ds = load_dataset("cifar10", tmp_path)
    # manifests and the studio's reproducing command load a named set by name, not as a path
    assert ds.reload_name == "cifar10"
    again = load_dataset(ds.reload_name, tmp_path)
    assert torch.equal(again.train.x, ds.train.x)
    assert reload_name("npz", "/data/x.npz") == "/data/x.npz"
