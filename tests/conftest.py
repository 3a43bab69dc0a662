"""Shared fixtures: tiny seeded models and data; a private MUDSC_HOME per test session."""
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True, scope="session")
def _private_home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MUDSC_HOME", str(tmp_path_factory.mktemp("mudsc_home")))
    torch.set_num_threads(2)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def digits():
    from mudsc.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def mnist_dir():
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("shared MNIST files not present")
    return MNIST_DIR


@pytest.fixture(scope="session")
def demo_parents(tmp_path_factory):
    """The built-in demo pair, trained once per test session."""
    from mudsc.zoo.demo import demo_pair

    return demo_pair(root=tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def same_init_family(tmp_path_factory):
    """A BatchNorm MLP base on all digits classes and two task models (0-4, 5-9) fine-tuned from it:
    ``(root, base path, [task paths])``."""
    from unit_helpers import small_mlp

    from mudsc.models import save_model
    from mudsc.zoo.finetune import finetune_parent

    root = tmp_path_factory.mktemp("same_init_family")
    base = root / "base.safetensors"
    save_model(small_mlp(tuple(range(10))), base)
    paths = []
    for i, task in enumerate(("0-4", "5-9")):
        paths.append(root / f"task{i}.safetensors")
        finetune_parent(base, dataset="digits", classes=task, seed=i, out=paths[-1], epochs=2, lr=3e-3,
                        batch_size=32, device="cpu")
    return root, base, paths


@pytest.fixture(scope="session")
def tiny_parents(tmp_path_factory):
    """Two random digits MLPs from different inits on tasks 0-4 and 5-9: paths of their checkpoints."""
    from mudsc.data import load_dataset
    from mudsc.models import create_model, save_model

    data = load_dataset("digits")
    root = tmp_path_factory.mktemp("tiny_parents")
    paths = []
    for seed, classes in ((0, (0, 1, 2, 3, 4)), (1, (5, 6, 7, 8, 9))):
        torch.manual_seed(seed)
        model = create_model("mlp", classes=classes, num_classes=10, in_chans=1, img_size=8, width=16, depth=2)
        paths.append(str(save_model(model, root / f"p{seed}.safetensors", dataset=data.describe())))
    return paths
