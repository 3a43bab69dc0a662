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
