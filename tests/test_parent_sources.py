"""App parents: uploads under a size limit, plain state dicts made self-describing, fit checks, tables."""
import pytest
import torch

from mudsc.errors import CheckpointError, DataError
from mudsc.models import create_model
from mudsc.models.checkpoint import load_model, sha256_file
from mudsc.studio.parent_sources import (
    architecture_summary,
    check_fits,
    layer_counts,
    plain_spec,
    read_info,
    self_describing,
    store_upload,
)


def test_store_upload_is_content_addressed_and_limited(tmp_path):
    p = store_upload("my model.pt", b"abc", root=tmp_path, max_bytes=10)
    assert p.read_bytes() == b"abc" and p.parent == tmp_path / "uploads" and " " not in p.name
    assert store_upload("my model.pt", b"abc", root=tmp_path, max_bytes=10) == p
    with pytest.raises(CheckpointError, match="upload limit"):
        store_upload("big.safetensors", b"x" * 11, root=tmp_path, max_bytes=10)
    with pytest.raises(CheckpointError, match="expected a"):
        store_upload("notes.txt", b"abc", root=tmp_path, max_bytes=10)


def test_plain_state_dict_becomes_a_self_describing_checkpoint(tmp_path, digits):
    torch.manual_seed(0)
    model = create_model("mlp", classes=(0, 1, 2), num_classes=10, in_chans=1, img_size=8, width=16)
    plain = tmp_path / "w.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(CheckpointError, match="plain state dict"):
        self_describing(plain, root=tmp_path)
    spec = plain_spec("mlp", classes="0-2", data=digits, kwargs={"width": 16})
    out = self_describing(plain, root=tmp_path, spec=spec)
    info = read_info(out)
    assert info["spec"]["classes"] == [0, 1, 2] and info["source_sha256"] == sha256_file(plain)
    assert self_describing(out, root=tmp_path) == out  # already self-describing: used as is
    other = self_describing(plain, root=tmp_path, spec=plain_spec("mlp", classes="3-5", data=digits,
                                                                   kwargs={"width": 16}))
    # the same weights read as another task are another file; the first parent's file is untouched
    assert other != out and read_info(out)["spec"]["classes"] == [0, 1, 2]
    assert read_info(other)["spec"]["classes"] == [3, 4, 5]
    rebuilt, _ = load_model(out)
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v)
    with pytest.raises(DataError):
        plain_spec("mlp", classes="0-12", data=digits)


def test_check_fits_names_the_mismatch(digits):
    check_fits({"spec": {"in_chans": 1, "img_size": 8, "num_classes": 10}}, digits)
    with pytest.raises(DataError, match="3x32x32"):
        check_fits({"spec": {"in_chans": 3, "img_size": 32}}, digits, name="cifar parent")
    with pytest.raises(DataError, match="100 classes"):
        check_fits({"spec": {"in_chans": 1, "img_size": 8, "num_classes": 100}}, digits)


def test_architecture_summary_counts_layers():
    model = create_model("resnet20", classes=(0, 1), num_classes=10, in_chans=1, img_size=8, width=1)
    counts = layer_counts(model)
    assert counts["Conv2d"] >= 19 and counts["BatchNorm2d"] == counts["Conv2d"]
    row = architecture_summary(model, {"spec": model.spec, "seed": 4})
    assert row["parameters"] == sum(p.numel() for p in model.parameters()) and row["input"] == "1x8x8"
    assert row["seed"] == 4


def test_timm_weights_by_name(tmp_path, digits):
    from mudsc.models import model_from_spec

    spec = plain_spec("timm:test_resnet", classes="5-9", data=digits)
    torch.manual_seed(0)
    model = model_from_spec(spec)
    plain = tmp_path / "timm.pt"
    torch.save(model.state_dict(), plain)
    rebuilt, info = load_model(self_describing(plain, root=tmp_path, spec=spec))
    assert info["spec"]["arch"] == "timm:test_resnet" and tuple(rebuilt.classes) == (5, 6, 7, 8, 9)
    x = digits.eval.x[:4]
    assert torch.allclose(rebuilt(x), model.eval()(x))
