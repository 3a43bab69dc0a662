import gzip

import numpy as np
import pytest
import torch

from mudsc.data import batches, check_tasks, load_dataset, parse_classes, random_shift
from mudsc.errors import DataError, UnknownNameError


@pytest.mark.parametrize("spec,expected", [
    ("0-4", (0, 1, 2, 3, 4)), ("5-9", (5, 6, 7, 8, 9)), ("odd", (1, 3, 5, 7, 9)),
    ("even", (0, 2, 4, 6, 8)), ("0,3,7", (0, 3, 7)), ("7, 0-1", (0, 1, 7)), ("all", tuple(range(10))),
])
def test_parse_classes(spec, expected):
    assert parse_classes(spec, 10) == expected


@pytest.mark.parametrize("spec", ["", "0-", "a,b", "4-1", "0,0", "3-12"])
def test_parse_classes_rejects(spec):
    with pytest.raises(DataError):
        parse_classes(spec, 10)


def test_overlapping_tasks_rejected():
    check_tasks([(0, 1), (2, 3)])
    with pytest.raises(DataError, match="overlap in classes \\[1\\]"):
        check_tasks([(0, 1), (1, 2)])


def test_digits_split_is_fixed_and_normalised(digits):
    from mudsc.data import _digits

    again = _digits()  # rebuilt from scratch, bypassing the in-process cache
    assert len(digits.train) + len(digits.eval) == 1797
    assert torch.equal(digits.train.y, again.train.y)
    assert abs(float(digits.train.x.mean())) < 1e-4 and abs(float(digits.train.x.std()) - 1) < 1e-3
    assert digits.in_chans == 1 and digits.img_size == 8 and digits.num_classes == 10


def test_mnist_test_only_split(mnist_dir):
    ds = load_dataset("mnist", mnist_dir)
    assert (len(ds.train), len(ds.eval)) == (8000, 2000)
    assert ds.img_size == 28
    # Official class counts of the whole 10k test set.
    counts = torch.bincount(torch.cat([ds.train.y, ds.eval.y]), minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_torchvision_root_and_truncation(tmp_path, mnist_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).write_bytes((mnist_dir / name).read_bytes())
    assert len(load_dataset("mnist", tmp_path).eval) == 2000
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "t10k-labels-idx1-ubyte.gz").write_bytes((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    data = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())[:5000]
    (broken / "t10k-images-idx3-ubyte").write_bytes(data)
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", broken)


def test_missing_data_dir_files(tmp_path):
    with pytest.raises(DataError, match="no MNIST files"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nope")


def test_npz_and_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(50, 12, 12), dtype=np.uint8)
    y = np.arange(50) % 5
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset("npz", tmp_path / "d.npz")
    assert ds.num_classes == 5 and ds.img_size == 12 and len(ds.train) == 40
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(DataError, match="lacks arrays"):
        load_dataset("npz", tmp_path / "bad.npz")
    root = tmp_path / "folder"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    ds = load_dataset("imagefolder", root)
    assert ds.num_classes == 2 and ds.in_chans == 3 and len(ds.train) + len(ds.eval) == 10


def test_unknown_dataset_suggests():
    with pytest.raises(UnknownNameError, match="did you mean mnist"):
        load_dataset("mnsit")


def test_batches_deterministic_and_shift_keeps_mass(digits):
    a = [x for x, _ in batches(digits.train, 64, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3))]
    b = [x for x, _ in batches(digits.train, 64, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3))]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    img = torch.zeros(1, 1, 8, 8)
    img[0, 0, 3:5, 3:5] = 1
    shifted = random_shift(img, 1, torch.Generator().manual_seed(0))
    assert float(shifted.sum()) == 4.0  # a one-pixel shift of a centred blob loses nothing
