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


def _mixed_folder(root):
    """An ImageFolder (train/ and val/) of random RGB images of different, mostly non-square sizes;
    returns {split: [(uint8 [3, h, w] image, label), ...]} in the loader's order."""
    from PIL import Image

    rng = np.random.default_rng(1)
    sizes = [(20, 14), (13, 25), (16, 16), (31, 9), (12, 12), (17, 23)]  # (height, width)
    out = {}
    for split, n in (("train", 6), ("val", 3)):
        out[split] = []
        for label, cls in enumerate(("ant", "bee")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                h, w = sizes[(i + label) % len(sizes)]
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / cls / f"{i}.png")
                out[split].append((torch.from_numpy(img).permute(2, 0, 1), label))
    return out


def test_imagefolder_of_mixed_sizes_loads_at_the_data_img_size_as_torchvision_resizes(tmp_path):
    from torchvision.transforms import v2

    images = _mixed_folder(tmp_path / "f")
    with pytest.raises(DataError, match="mixes image sizes .*give --data-img-size N"):
        load_dataset("imagefolder", tmp_path / "f")
    ds = load_dataset("imagefolder", tmp_path / "f", img_size=10)
    assert ds.img_hw == (10, 10) and ds.in_chans == 3 and ds.num_classes == 2 and ds.resized_to == 10
    tv = v2.Compose([v2.Resize(10, antialias=True), v2.CenterCrop(10)])
    mean, std = torch.tensor(ds.mean)[:, None, None], torch.tensor(ds.std)[:, None, None]
    for split, listed in ((ds.train, images["train"]), (ds.eval, images["val"])):
        assert split.y.tolist() == [label for _, label in listed]
        pixels = split.x * std + mean  # the normalisation undone: the resized pixels in [0, 1]
        as_float = torch.stack([tv(img.float() / 255) for img, _ in listed])
        assert (pixels - as_float).abs().max() < 1e-5
        # torchvision on the uint8 images rounds, with a fixed-point kernel: one grey level at most
        as_uint8 = torch.stack([tv(img) for img, _ in listed]).float() / 255
        assert (pixels - as_uint8).abs().max() <= 1 / 255 + 1e-5


def test_data_img_size_is_part_of_the_data_sets_identity(tmp_path):
    plain, at12, at16 = load_dataset("digits"), load_dataset("digits", img_size=12), load_dataset("digits", img_size=16)
    assert plain.img_size == 8 and at12.img_hw == (12, 12) and at16.img_hw == (16, 16)
    assert len({plain.fingerprint, at12.fingerprint, at16.fingerprint}) == 3
    assert plain.describe()["resized_to"] is None and at12.describe()["resized_to"] == 12
    assert load_dataset("digits", img_size=12) is at12  # the in-process cache keys on the size too
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", x=rng.integers(0, 255, (20, 6, 15), dtype=np.uint8), y=np.arange(20) % 2)
    assert load_dataset("npz", tmp_path / "wide.npz", img_size=4).img_hw == (4, 4)
    for bad in (0, -3, 2.5):
        with pytest.raises(DataError, match="--data-img-size must be a positive whole number"):
            load_dataset("digits", img_size=bad)


def test_imagefolder_with_a_few_grey_and_palette_images_loads_them_as_rgb(tmp_path):
    """As torchvision's loader does: colour sets with stray grey photos (ImageNet has some) load, the
    grey ones repeated over three channels; a palette image keeps its colours."""
    from PIL import Image

    rng = np.random.default_rng(2)
    for cls in ("a", "b"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "f" / cls / f"{i}.png")
    grey = rng.integers(0, 256, (6, 6), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "f" / "a" / "grey.png")
    pal = Image.new("P", (6, 6))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1] * 18)
    pal.save(tmp_path / "f" / "b" / "palette.png")
    ds = load_dataset("imagefolder", tmp_path / "f")
    assert ds.in_chans == 3 and len(ds.train) + len(ds.eval) == 10
    mean, std = torch.tensor(ds.mean)[:, None, None], torch.tensor(ds.std)[:, None, None]
    x = torch.cat([ds.train.x, ds.eval.x]) * std + mean
    raw = torch.from_numpy(grey).float() / 255
    assert any(all((img[c] - raw).abs().max() < 1e-5 for c in range(3)) for img in x)
    red_blue = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # channel x (palette entry 0, 1)
    assert any(torch.allclose(img[:, 0, :2], red_blue, atol=1e-5) for img in x)
