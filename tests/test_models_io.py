import pytest
import torch

from mudsc.errors import CheckpointError, ConfigError, ShapeMismatchError, UnknownNameError
from mudsc.models import create_model, list_models
from mudsc.models.checkpoint import load_model, read_state_dict, save_model

ARCHS = [
    ("mlp", {"width": 32}),
    ("mlp", {"width": 16, "norm": "bn", "bias": False}),
    ("cnn", {"width": 1}),
    ("resnet20", {"width": 1}),
    ("resnet20gn", {"width": 1, "groups": 4}),
    ("timm:resnet18", {}),
    ("timm:vit_tiny_patch16_224", {"patch_size": 7, "depth": 2, "num_heads": 3, "embed_dim": 48}),
]


def _model(arch, kw, head="shared"):
    torch.manual_seed(0)
    return create_model(arch, classes=(0, 1, 2, 3, 4), num_classes=10, head=head, in_chans=1, img_size=28,
                        feat_dim=32, **kw)


def test_registry_lists_models():
    assert {"mlp", "cnn", "resnet20", "resnet20gn"} <= set(list_models())
    with pytest.raises(UnknownNameError, match="did you mean resnet20"):
        create_model("resnet2O", classes=(0,), num_classes=10)
    with pytest.raises(UnknownNameError, match="unknown timm model"):
        create_model("timm:not_a_model_xyz", classes=(0,), num_classes=10)


@pytest.mark.parametrize("head", ["shared", "own"])
@pytest.mark.parametrize("arch,kw", ARCHS, ids=[a + str(i) for i, (a, _) in enumerate(ARCHS)])
def test_save_load_identical_outputs(tmp_path, arch, kw, head):
    model = _model(arch, kw, head).eval()
    x = torch.randn(3, 1, 28, 28)
    path = save_model(model, tmp_path / "m.safetensors", seed=0, accuracy=0.5)
    loaded, info = load_model(path)
    assert info["accuracy"] == 0.5 and info["spec"]["arch"] == arch
    assert torch.equal(model(x), loaded(x))


def test_shared_head_is_orthonormal_and_shared():
    a = _model("mlp", {"width": 8})
    b = _model("mlp", {"width": 8})
    e = a.head.class_embed
    assert torch.allclose(e @ e.T, torch.eye(10), atol=1e-5)
    assert torch.equal(e, b.head.class_embed)  # parents trained apart still share one output space
    with pytest.raises(ConfigError, match="feat_dim 4"):
        create_model("mlp", classes=(0,), num_classes=10, feat_dim=4)


def test_plain_state_dicts(tmp_path):
    model = _model("mlp", {"width": 8}).eval()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="plain state dict"):
        load_model(tmp_path / "plain.pt")
    loaded, _ = load_model(tmp_path / "plain.pt", spec=model.spec)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))


def test_bad_checkpoints(tmp_path):
    model = _model("mlp", {"width": 8})
    path = save_model(model, tmp_path / "m.safetensors")
    blob = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_model(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(tmp_path / "junk.pt")

    import argparse

    torch.save({"x": argparse.Namespace(payload=1)}, tmp_path / "evil.pt")  # an arbitrary object
    with pytest.raises(CheckpointError, match="never pickled objects"):
        read_state_dict(tmp_path / "evil.pt")

    sd = model.state_dict()
    wider = _model("mlp", {"width": 16})
    with pytest.raises(ShapeMismatchError, match="body.layers.1.weight has shape \\(8, 784\\)"):
        load_model(path, spec=wider.spec)
    sd_missing = {k: v for k, v in sd.items() if "layers.1" not in k}
    torch.save(sd_missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing keys \\(e.g. body.layers.1.weight"):
        load_model(tmp_path / "missing.pt", spec=model.spec)
    sd_nan = dict(sd)
    sd_nan["body.layers.1.weight"] = sd["body.layers.1.weight"].clone().fill_(float("nan"))
    torch.save(sd_nan, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_model(tmp_path / "nan.pt", spec=model.spec)
