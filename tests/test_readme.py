"""Every command line of README.md runs as written, on small data.

The README's ``bash`` blocks are read line by line (continuations joined, comments dropped); each
``mudsc ...`` line runs in a scratch directory where ``../shared/data/mnist`` is a 1,000-image MNIST
and the files the README names exist. Placeholders of the synopsis lines are filled in from
:data:`FILL`; optional ``[...]`` parts are left out, and a trailing ``...`` stands for the task
and one epoch.
"""
import gzip
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from test_byom import NET as MODELS  # the README's my_models.py: a model file outside the registry

from mudsc.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
MNIST = Path("/work/shared/data/mnist")
FILL = {"FILE.safetensors": "A.safetensors", "DIR": "../shared/data/mnist", "A0,B0": "A.safetensors,B.safetensors",
        "A1,B1": "B.safetensors,A.safetensors", "A2,B2": "A.safetensors,B.safetensors"}
ELLIPSIS = "--classes 0-4 --epochs 1 --out runs/ellipsis.safetensors"

def command_lines(text: str) -> list[str]:
    """The ``mudsc`` lines of the README's bash blocks, continuations joined and comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(shlex.split(line, comments=True))
            if line.startswith("mudsc "):
                lines.append(line)
    return lines


def as_run(line: str) -> list[str]:
    line = re.sub(r"\s*\[[^\]]*\]", "", line)
    if line.endswith("..."):
        line = line[:-3] + ELLIPSIS
    return [FILL.get(w, w) for w in shlex.split(line)][1:]


def _small_mnist(root: Path, n: int = 1000) -> None:
    root.mkdir(parents=True)
    for stem, header, size in (("t10k-images-idx3-ubyte", (0x803, n, 28, 28), 784),
                               ("t10k-labels-idx1-ubyte", (0x801, n), 1)):
        with gzip.open(MNIST / f"{stem}.gz") as f:
            body = f.read()[4 * len(header):][: n * size]
        with gzip.open(root / f"{stem}.gz", "wb") as f:
            f.write(b"".join(v.to_bytes(4, "big") for v in header) + body)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("no MNIST in /work/shared/data/mnist")
    _small_mnist(tmp_path / "shared" / "data" / "mnist")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MUDSC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MUDSC_DATA", str(tmp_path / "shared" / "data" / "mnist"))
    for task, name in (("0-4", "A"), ("5-9", "B")):
        assert main(["zoo", "train", "--dataset", "mnist", "--data-dir", "../shared/data/mnist", "--arch", "mlp",
                     "--width", "16", "--classes", task, "--epochs", "1", "--out", f"{name}.safetensors"]) == 0
    (work / "my_models.py").write_text(MODELS)
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_models", work / "my_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import torchvision
    from safetensors.torch import save_file

    for i, (torch_file, safe_file, make) in enumerate((("a.pt", "b.safetensors", mod.make_net),
                                                       ("rn_a.pt", "rn_b.pt", None))):
        nets = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            nets.append(make() if make else torchvision.models.resnet18(num_classes=5))
        torch.save({"state_dict": nets[0].state_dict()}, work / torch_file)
        if safe_file.endswith(".pt"):
            torch.save({"model": {f"module.{k}": v for k, v in nets[1].state_dict().items()}}, work / safe_file)
        else:
            save_file({f"module.{k}": v.contiguous() for k, v in nets[1].state_dict().items()}, str(work / safe_file))
    return work


def test_command_lines_are_found():
    lines = command_lines(README.read_text())
    assert any("--kw img_size=28" in line for line in lines)
    assert any("--arch torchvision:resnet18" in line for line in lines)
    assert all(as_run(line)[0] in {"zoo", "eval", "merge", "cuts", "sweep", "spaces"} for line in lines)
    assert np.all([("[" not in w and "..." not in w) for line in lines for w in as_run(line)])


@pytest.mark.slow
def test_every_readme_command_line_runs(scratch, capsys):
    failed = []
    for line in command_lines(README.read_text()):
        rc = main(as_run(line) + (["--quiet"] if as_run(line)[0] in ("merge", "sweep") else []))
        if rc != 0:
            failed.append(f"{line}\n  -> {capsys.readouterr().err.strip()[-300:]}")
    assert failed == []
