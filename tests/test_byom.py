"""Bring your own model: an architecture from the user's file, plain checkpoints as training loops
save them, the user's own heads, tasks and preprocessing, torchvision and offline timm weights."""
import json
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from mudsc.cli import main

NET = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, width=8, out=5, in_ch=1):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.classifier = nn.Linear(2 * width, out)

        def forward(self, x):
            return self.classifier(self.features(x))


    def make_net(width=8, out=5, in_ch=1):
        return Net(width, out, in_ch)
''')


def _train_plain(net, classes, seed, steps=80):
    """A training loop that knows nothing of mudsc: raw digits, its own normalisation (0.5, 0.5)."""
    d = load_digits()
    x = (torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0 - 0.5) / 0.5
    y = torch.tensor(d.target)
    keep = torch.isin(y, torch.tensor(classes))
    x, y = x[keep], y[keep] - min(classes)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.eval().state_dict().items()}


@pytest.fixture(scope="module")
def user_parents(tmp_path_factory):
    """A model file outside the registry and two parents saved as people save them."""
    import importlib.util

    root = tmp_path_factory.mktemp("byom")
    code = root / "my_models.py"
    code.write_text(NET)
    spec = importlib.util.spec_from_file_location("my_models_test", code)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    a = _train_plain(mod.make_net(), (0, 1, 2, 3, 4), 0)
    torch.manual_seed(1)
    b = _train_plain(mod.make_net(), (5, 6, 7, 8, 9), 1)
    pa, pb = root / "a.pt", root / "b.safetensors"
    torch.save({"state_dict": a, "epoch": 3}, pa)
    save_file({f"module.{k}": v.contiguous() for k, v in b.items()}, str(pb))  # as DDP names them
    return {"code": code, "a": pa, "b": pb, "root": root, "sd": a}


def _merge_args(p, *extra):
    return ["merge", "--parents", str(p["a"]), str(p["b"]), "--dataset", "digits", "--arch",
            f"{p['code']}:make_net", "--kw", "width=8", "--classes", "0-4", "5-9", "--mean", "0.5", "--std", "0.5",
            "--stats-images", "250", "--quiet", *extra]


def test_user_architecture_merges_from_the_cli_and_the_manifest_reproduces_it(user_parents, tmp_path, capsys):
    p = user_parents
    assert main(["cuts", "--model", str(p["a"]), "--dataset", "digits", "--arch", f"{p['code']}:make_net",
                 "--classes", "0-4", "--json"]) == 0
    cuts = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert cuts[-1] == "full" and len(cuts) >= 2
    out = tmp_path / "m"
    assert main(_merge_args(p, "--method", "zipit", "--cut", cuts[0], "--out", str(out), "--json")) == 0
    metrics = json.loads(capsys.readouterr().out)
    # the parents learnt their tasks: each is far above chance on its own task
    assert all(m["own_task_acc"] > 0.5 for m in metrics["parents"]), metrics["parents"]
    assert 0.2 < metrics["per_task_acc"] <= 1
    manifest = json.loads((out / "manifest.json").read_text())
    spec = manifest["parents"][0]["spec"]
    assert spec["arch"].endswith("my_models.py:make_net") and spec["classes"] == [0, 1, 2, 3, 4]
    assert spec["input"]["mean"] == [0.5] and spec["input"]["std"] == [0.5]
    assert "arch_sha256" in manifest["parents"][0]
    again = tmp_path / "again"
    assert main(["merge", "--manifest", str(out / "manifest.json"), "--out", str(again), "--quiet"]) == 0
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_a_manifest_made_from_relative_data_paths_reproduces_from_another_directory(user_parents, tmp_path,
                                                                                    monkeypatch):
    digits = load_digits()
    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)
    np.savez(work / "data" / "digits.npz", x=digits.images.astype(np.float32) / 16, y=digits.target)
    monkeypatch.chdir(work)
    args = _merge_args(user_parents, "--dataset", "npz", "--data-dir", "data/digits.npz", "--method", "zipit",
                       "--cut", "features.0", "--batch-size", "100", "--stats-images", "100", "--reset-images", "100")
    assert main([*args, "--out", "m"]) == 0
    data = json.loads((work / "m" / "manifest.json").read_text())["data"]
    assert data["source"] == data["data_dir"] == str(work / "data" / "digits.npz")
    monkeypatch.chdir(tmp_path)  # where data/digits.npz means nothing
    assert main(["merge", "--manifest", "project/m/manifest.json", "--out", "again", "--quiet"]) == 0
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (work / "m" / "model.safetensors").read_bytes()


def test_plain_parents_align_then_fuse_and_the_merge_same_manifest_reloads_them(user_parents, tmp_path, capsys):
    p = user_parents
    out = tmp_path / "fused"
    args = ["merge-same", "--models", str(p["a"]), str(p["b"]), "--method", "permute+regmean", "--dataset", "digits",
            "--arch", f"{p['code']}:make_net", "--kw", "width=8", "--classes", "0-4", "5-9", "--mean", "0.5",
            "--std", "0.5", "--align-images", "250", "--stats-examples", "200", "--reset-images", "250", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["inputs"]["models"][1]
    assert entry["spec"]["classes"] == [5, 6, 7, 8, 9] and "arch_sha256" in entry
    again = tmp_path / "again"
    assert main(["merge-same", "--manifest", str(out / "manifest.json"), "--out", str(again), "--quiet"]) == 0
    for o in manifest["outputs"]:
        assert (again / o["path"]).read_bytes() == (out / o["path"]).read_bytes()
    # the model code is part of the record: changed code is refused, in one line
    capsys.readouterr()
    p["code"].write_text(NET + "\n# edited\n")
    try:
        assert main(["merge-same", "--manifest", str(out / "manifest.json"), "--out", str(tmp_path / "x")]) == 2
    finally:
        p["code"].write_text(NET)
    err = capsys.readouterr().err
    assert "model code" in err and "changed since the manifest was written" in err


def test_user_parents_evaluate_as_their_training_loop_did(user_parents, capsys):
    p = user_parents
    assert main(["eval", "--model", str(p["a"]), "--dataset", "digits", "--arch", f"{p['code']}:make_net",
                 "--classes", "0-4", "--mean", "0.5", "--std", "0.5", "--json"]) == 0
    with_norm = json.loads(capsys.readouterr().out)["accuracy"]
    assert main(["eval", "--model", str(p["a"]), "--dataset", "digits", "--arch", f"{p['code']}:make_net",
                 "--classes", "0-4", "--json"]) == 0
    # without its own normalisation the parent sees other inputs: the option is applied
    assert with_norm > 0.6 and json.loads(capsys.readouterr().out)["accuracy"] != with_norm


def test_full_merge_of_own_heads_is_refused_with_the_cuts(user_parents, tmp_path, capsys):
    assert main(_merge_args(user_parents, "--method", "zipit", "--out", str(tmp_path / "f"))) == 2
    err = capsys.readouterr().err
    assert "do not share an output space" in err and "merge up to a cut" in err and "Traceback" not in err


@pytest.mark.parametrize("case, expect", [
    ("prefix", "tried key prefixes"),
    ("shape", "the model expects"),
    ("missing", "does not exist"),
    ("function", "has no function 'make_nett'"),
    ("classes", "one per parent"),
    ("channels", "--mean has 3 values; the model takes 1-channel images (give one value)"),
])
def test_bad_inputs_are_one_line_errors(user_parents, tmp_path, capsys, case, expect):
    p = dict(user_parents)
    args = _merge_args(p, "--method", "zipit", "--cut", "features.2", "--out", str(tmp_path / "x"))
    if case == "prefix":
        bad = tmp_path / "bad.pt"
        torch.save({f"net.{k}": v for k, v in p["sd"].items()}, bad)
        args[2] = str(bad)
    elif case == "shape":
        args[args.index("width=8")] = "width=4"
    elif case == "missing":
        args[2] = str(tmp_path / "nothing.pt")
    elif case == "function":
        args[args.index("--arch") + 1] = f"{p['code']}:make_nett"
    elif case == "channels":
        args[args.index("--mean") + 1] = "0.5,0.5,0.5"
    else:
        args.remove("5-9")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    if case == "shape":
        assert "(8, 1, 3, 3)" in err and "(4, 1, 3, 3)" in err


def test_missing_keys_are_named(user_parents):
    from mudsc.data import load_dataset
    from mudsc.errors import CheckpointError
    from mudsc.models.checkpoint import fit_keys
    from mudsc.models.external import build_external, external_spec

    spec = external_spec(f"{user_parents['code']}:make_net", classes=(0, 1, 2, 3, 4),
                         data=load_dataset("digits").describe())
    sd = {f"model.{k}": v for k, v in user_parents["sd"].items() if k != "classifier.bias"}
    with pytest.raises(CheckpointError, match="1 missing keys \\(e.g. body.classifier.bias\\)"):
        fit_keys(build_external(spec), sd)
    sd = {**{f"model.{k}": v for k, v in user_parents["sd"].items()}, "model.extra.weight": torch.zeros(1)}
    extra = r"removing 'model.'\) leaves 1 unexpected keys \(e.g. body.extra.weight\)"
    with pytest.raises(CheckpointError, match=extra):
        fit_keys(build_external(spec), sd)


@pytest.mark.parametrize("wrapper", ["model", "model_state_dict"])
def test_training_loop_wrappers_and_lightning_prefix_load(user_parents, tmp_path, wrapper):
    from mudsc.data import load_dataset
    from mudsc.models.checkpoint import load_model
    from mudsc.models.external import external_spec

    f = tmp_path / "w.pth"
    torch.save({wrapper: {f"model.{k}": v for k, v in user_parents["sd"].items()}, "optimizer": {"lr": 0.1}}, f)
    spec = external_spec(f"{user_parents['code']}:make_net", classes=(0, 1, 2, 3, 4),
                         data=load_dataset("digits").describe())
    model, _ = load_model(f, spec=spec)
    assert torch.equal(model.body.classifier.weight, user_parents["sd"]["classifier.weight"])


def test_a_pickled_object_is_refused(tmp_path):
    from mudsc.errors import CheckpointError
    from mudsc.models.checkpoint import read_state_dict

    f = tmp_path / "obj.pt"
    import argparse

    torch.save({"state_dict": {"w": torch.zeros(1)}, "cfg": argparse.Namespace(lr=0.1)}, f)  # an object, not data
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_state_dict(f)


def test_class_embeddings_give_a_shared_output_space(user_parents, tmp_path, capsys):
    emb = np.random.default_rng(0).standard_normal((10, 5)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    args = _merge_args(user_parents, "--class-embeddings", str(tmp_path / "emb.npy"), "--method", "zipit",
                       "--out", str(tmp_path / "full"), "--json")
    assert main(args) == 0  # a full merge: one head answers both tasks
    m = json.loads(capsys.readouterr().out)
    assert 0 <= m["joint_acc"] <= 1
    spec = json.loads((tmp_path / "full" / "manifest.json").read_text())["parents"][1]["spec"]
    assert spec["head"] == "embeddings" and len(spec["class_embeddings"]["sha256"]) == 64


def test_preprocess_matches_torchvision_resize_crop_normalize():
    from torchvision.transforms import v2

    from mudsc.models.preprocess import Preprocess, preprocess_spec

    pixels = torch.rand(2, 1, 20, 30)
    dm, ds = [0.4], [0.2]
    spec = preprocess_spec(data_mean=dm, data_std=ds, data_size=(20, 30), channels=3, mean=[0.485, 0.456, 0.406],
                           std=[0.229, 0.224, 0.225], img_size=16)
    ours = Preprocess(spec)((pixels - 0.4) / 0.2)
    tv = v2.Compose([v2.Grayscale(3), v2.Resize(16, antialias=True), v2.CenterCrop(16),
                     v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    assert ours.shape == (2, 3, 16, 16)
    assert torch.allclose(ours, tv(pixels), atol=1e-5)


def test_torchvision_model_by_name_with_grey_images():
    from mudsc.data import load_dataset
    from mudsc.models.external import build_external, external_spec
    from mudsc.unitgraph import trace

    spec = external_spec("torchvision:resnet18", classes=(0, 1, 2, 3, 4), data=load_dataset("digits").describe(),
                         img_size=32)
    model = build_external(spec)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 5)
    assert "layer1" in [c.name for c in trace(model).cuts]


def _tiny_timm(name):
    import timm

    torch.manual_seed(3)
    return timm.create_model(name, pretrained=False, num_classes=5)


def test_timm_weights_file_loads_by_name(tmp_path):
    from mudsc.models.external import builder

    ref = _tiny_timm("test_vit")
    f = tmp_path / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(f))
    net = builder("timm:test_vit")(num_classes=5, pretrained_file=str(f))
    # timm drops the classifier of a checkpoint whose class count differs from its pretrained config's
    body = [k for k in ref.state_dict() if not k.startswith("head.")]
    assert len(body) > 10 and all(torch.equal(ref.state_dict()[k], net.state_dict()[k]) for k in body)


def test_timm_weights_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    import timm

    from mudsc.errors import ConfigError
    from mudsc.models.external import builder

    hub = timm.models.get_pretrained_cfg("test_vit").hf_hub_id
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        builder("timm:test_vit")(num_classes=5, pretrained=True)
    ref = _tiny_timm("test_vit")
    repo = tmp_path / f"models--{hub.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              str(repo / "snapshots" / "abc123" / "model.safetensors"))
    net = builder("timm:test_vit")(num_classes=5, pretrained=True)
    assert torch.equal(net.state_dict()["patch_embed.proj.weight"], ref.state_dict()["patch_embed.proj.weight"])


def _digits_raw(classes):
    """The held-out digits of `classes` as pixels in [0, 1] and labels within the task, as mudsc splits them."""
    from mudsc.data import load_dataset

    ds = load_dataset("digits")
    sub = ds.eval.subset(tuple(classes))
    return sub.x * ds.std[0] + ds.mean[0], sub.y - min(classes)


@pytest.mark.parametrize("form", ["file", "module", "torchvision", "timm"])
def test_every_arch_form_evaluates_as_the_network_itself(user_parents, tmp_path, monkeypatch, capsys, form):
    """FILE.py:FUNCTION, package.module:FUNCTION, torchvision:NAME and timm:NAME read a plain parent:
    `mudsc eval` agrees with running the network by hand on (pixels - 0.5) / 0.5."""
    p = user_parents
    torch.manual_seed(0)
    if form in ("file", "module"):
        ns: dict = {}
        exec(NET, ns)
        net, weights = ns["make_net"](), p["a"]
        net.load_state_dict(p["sd"])
        monkeypatch.syspath_prepend(str(p["root"]))
        arch = f"{p['code']}:make_net" if form == "file" else "my_models:make_net"
    else:
        if form == "torchvision":
            import torchvision

            arch, net = "torchvision:resnet18", torchvision.models.resnet18(num_classes=5)
        else:
            arch, net = "timm:test_resnet", _tiny_timm("test_resnet")
        weights = tmp_path / f"{form}.safetensors"
        save_file({f"model.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(weights))  # Lightning
    x, y = _digits_raw((0, 1, 2, 3, 4))
    with torch.no_grad():
        inputs = (x - 0.5) / 0.5
        want = (net.eval()(inputs.expand(-1, 3, -1, -1) if form in ("torchvision", "timm") else inputs)
                .argmax(1) == y).float().mean().item()
    assert main(["eval", "--model", str(weights), "--dataset", "digits", "--arch", arch, "--classes", "0-4",
                 "--mean", "0.5", "--std", "0.5", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["n"] == len(y) and abs(got["accuracy"] - want) <= 1 / len(y)
    if form in ("file", "module"):
        assert want > 0.6  # the trained parent, not a random network


def test_sweep_stats_and_landscape_read_user_parents(user_parents, tmp_path, capsys):
    p = user_parents
    user = ["--dataset", "digits", "--arch", f"{p['code']}:make_net", "--kw", "width=8", "--mean", "0.5",
            "--std", "0.5"]
    parents = ["--parents", str(p["a"]), str(p["b"]), *user, "--classes", "0-4", "5-9", "--stats-images", "250",
               "--quiet"]
    assert main(["merge", *parents, "--method", "zipit", "--cut", "features.0", "--out", str(tmp_path / "m"),
                 "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert main(["sweep", *parents, "--methods", "weight-avg", "zipit", "--cuts", "features.0",
                 "--out", str(tmp_path / "sweep")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "sweep.json").read_text())["rows"]}
    assert set(rows) == {"weight-avg", "zipit"}
    assert rows["zipit"]["joint_acc"] == pytest.approx(merged["joint_acc"])  # the sweep's merge is merge's

    capsys.readouterr()
    assert main(["stats", "--model", str(p["b"]), *user, "--classes", "5-9", "--examples", "64", "--parts", "gram",
                 "--out", str(tmp_path / "b.stats.safetensors"), "--json", "--quiet"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["count"] == 64 and rec["tensors"]["gram"] >= 3

    emb = np.random.default_rng(0).standard_normal((10, 5)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    assert main(["landscape", "--models", str(p["a"]), str(p["b"]), *user, "--classes", "0-4", "5-9",
                 "--class-embeddings", str(tmp_path / "emb.npy"), "--methods", "weight-avg", "zipit", "--grid", "3",
                 "--path-steps", "0", "--bn", "preview", "--eval-images", "20", "--calib-images", "32",
                 "--stats-images", "250", "--reset-images", "100", "--no-cache", "--out", str(tmp_path / "l.npz"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["complete"] and len(summary["tasks"]) == 2
    assert {m["merge"] for m in summary["models"]} >= {"weight-avg", "zipit"}


def test_preprocessing_per_parent_is_recorded_and_one_image_size_is_required(user_parents, tmp_path, capsys):
    p = user_parents
    args = ["merge", "--parents", str(p["a"]), str(p["b"]), "--dataset", "digits", "--arch", f"{p['code']}:make_net",
            "--classes", "0-4", "5-9", "--mean", "0.5", "0.4", "--std", "0.5", "0.3", "--stats-images", "250",
            "--method", "zipit", "--cut", "features.0", "--quiet"]
    assert main([*args, "--img-size", "8", "--out", str(tmp_path / "m")]) == 0
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    inputs = [e["spec"]["input"] for e in manifest["parents"]]
    assert [(i["mean"], i["std"], i["img_size"]) for i in inputs] == [([0.5], [0.5], 8), ([0.4], [0.3], 8)]
    assert main(["merge", "--manifest", str(tmp_path / "m" / "manifest.json"), "--out", str(tmp_path / "again"),
                 "--quiet"]) == 0
    again = (tmp_path / "again" / "model.safetensors").read_bytes()
    assert again == (tmp_path / "m" / "model.safetensors").read_bytes()
    capsys.readouterr()
    # statistics pair units position by position: parents seeing different image sizes are refused
    assert main([*args, "--img-size", "8", "12", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "parent 1 sees 1x12x12 inputs" in err and "same --img-size" in err and len(err.strip().splitlines()) == 1


def test_class_embeddings_from_safetensors_and_their_errors(user_parents, tmp_path, capsys):
    from mudsc.errors import CheckpointError
    from mudsc.models.external import read_class_embeddings

    emb = torch.randn(10, 5, generator=torch.Generator().manual_seed(0))
    save_file({"text_embed": emb}, str(tmp_path / "emb.safetensors"))
    assert torch.equal(read_class_embeddings(tmp_path / "emb.safetensors"), emb)
    save_file({"a": emb, "b": emb.clone()}, str(tmp_path / "two.safetensors"))
    with pytest.raises(CheckpointError, match="holds 2 tensors"):
        read_class_embeddings(tmp_path / "two.safetensors")
    np.save(tmp_path / "flat.npy", np.zeros(10, dtype=np.float32))
    with pytest.raises(CheckpointError, match=r"float \[num_classes, d\] tensor"):
        read_class_embeddings(tmp_path / "flat.npy")
    args = _merge_args(user_parents, "--class-embeddings", str(tmp_path / "emb.safetensors"), "--method", "zipit",
                       "--out", str(tmp_path / "full"))
    assert main(args) == 0
    spec = json.loads((tmp_path / "full" / "manifest.json").read_text())["parents"][0]["spec"]
    assert spec["head"] == "embeddings" and spec["class_embeddings"]["path"].endswith("emb.safetensors")
    capsys.readouterr()
    np.save(tmp_path / "rows.npy", np.zeros((7, 5), dtype=np.float32))
    args[args.index(str(tmp_path / "emb.safetensors"))] = str(tmp_path / "rows.npy")
    assert main(args) == 2
    assert "have 7 rows; the data set has 10 classes" in capsys.readouterr().err


def _digit_folder(root, size, *more):
    """The digits as an ImageFolder of PNGs (train/ and val/, one folder per class), each image scaled
    up to `size` = (width, height) by pixel repetition and centred on a black canvas as wide as asked;
    with `more` sizes, the images take them in turn."""
    from PIL import Image

    d = load_digits()
    sizes = (size, *more)
    for split, idx in (("train", range(0, 300)), ("val", range(300, 600))):
        for i in idx:
            size = sizes[i % len(sizes)]
            side = min(size)
            folder = root / split / str(d.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            digit = Image.fromarray((d.images[i] / 16 * 255).astype(np.uint8)).resize((side, side), Image.NEAREST)
            canvas = Image.new("L", size)
            canvas.paste(digit, ((size[0] - side) // 2, (size[1] - side) // 2))
            canvas.save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("size", [(16, 16), (24, 16)], ids=["square", "wide"])
def test_user_parent_reads_an_image_folder_at_another_resolution(user_parents, tmp_path, capsys, size):
    """Trained on 8x8 digits, evaluated on the same digits as 16-pixel PNGs: --img-size 8 resizes the
    shorter side and centre-crops, as torchvision's Resize + CenterCrop, so the parent reads them again."""
    folder = _digit_folder(tmp_path / "digits_png", size)
    args = ["eval", "--model", str(user_parents["a"]), "--dataset", "imagefolder", "--data-dir", str(folder),
            "--arch", f"{user_parents['code']}:make_net", "--classes", "0-4", "--mean", "0.5", "--std", "0.5", "--json"]
    assert main([*args, "--img-size", "8"]) == 0
    resized = json.loads(capsys.readouterr().out)["accuracy"]
    assert resized > 0.6
    if size[0] == size[1]:  # the network runs at any size (global pooling), but it learnt 8-pixel digits
        assert main(args) == 0
        assert json.loads(capsys.readouterr().out)["accuracy"] < resized - 0.2
    else:  # a non-square image has no one size to keep: --img-size is asked for
        assert main(args) == 2
        assert "images are 16x24; give --img-size" in capsys.readouterr().err


def test_an_image_folder_of_mixed_sizes_merges_at_the_data_img_size_and_the_manifest_reproduces_it(
        user_parents, tmp_path, capsys):
    """8-pixel parents on the digits as PNGs of three sizes: --data-img-size 8 loads them all at 8x8 (the
    parents need no --img-size of their own), the manifest records the size and redoes the merge."""
    folder = _digit_folder(tmp_path / "mixed", (16, 16), (24, 16), (16, 20))
    assert main(["cuts", "--model", str(user_parents["a"]), "--dataset", "digits", "--arch",
                 f"{user_parents['code']}:make_net", "--classes", "0-4", "--json"]) == 0
    cut = json.loads(capsys.readouterr().out)[0]["name"]
    args = _merge_args(user_parents, "--method", "zipit", "--cut", cut, "--out", str(tmp_path / "m"),
                       "--data-dir", str(folder))
    args[args.index("digits")] = "imagefolder"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "mixes image sizes" in err and "give --data-img-size N" in err and "Traceback" not in err
    assert main([*args, "--data-img-size", "8", "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert all(m["own_task_acc"] > 0.6 for m in merged["parents"]), merged["parents"]  # they read their digits
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["data"]["resized_to"] == 8 and manifest["data"]["img_hw"] == [8, 8]
    again = tmp_path / "again"
    assert main(["merge", "--manifest", str(tmp_path / "m" / "manifest.json"), "--out", str(again), "--quiet"]) == 0
    assert (again / "model.safetensors").read_bytes() == (tmp_path / "m" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*args, "--data-img-size", "12", "--out", str(tmp_path / "m12"), "--json"]) == 0
    at12 = json.loads((tmp_path / "m12" / "manifest.json").read_text())["data"]
    assert at12["resized_to"] == 12 and at12["sha256"] != manifest["data"]["sha256"]


def test_merge_same_on_an_image_folder_of_mixed_sizes_records_the_data_img_size(user_parents, tmp_path):
    p = user_parents
    folder = _digit_folder(tmp_path / "mixed", (16, 16), (16, 20))
    out = tmp_path / "fused"
    args = ["merge-same", "--models", str(p["a"]), str(p["b"]), "--method", "permute+regmean", "--dataset",
            "imagefolder", "--data-dir", str(folder), "--data-img-size", "8", "--arch", f"{p['code']}:make_net",
            "--kw", "width=8", "--classes", "0-4", "5-9", "--mean", "0.5", "--std", "0.5", "--align-images", "250",
            "--stats-examples", "200", "--reset-images", "250", "--quiet", "--out", str(out)]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["resized_to"] == 8 and manifest["dataset"]["img_hw"] == [8, 8]
    again = tmp_path / "again"
    assert main(["merge-same", "--manifest", str(out / "manifest.json"), "--out", str(again), "--quiet"]) == 0
    for o in manifest["outputs"]:
        assert (again / o["path"]).read_bytes() == (out / o["path"]).read_bytes()


def test_user_parents_merge_on_cifar10_in_both_official_layouts(user_parents, tmp_path, capsys):
    """Fake CIFAR-10 files in the binary and the Python layout: three-channel user parents, resized to 16
    pixels, merge on either, and both layouts give the same merge."""
    from test_data_cifar import cifar10

    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ns: dict = {}
        exec(NET, ns)
        nets.append(ns["make_net"](in_ch=3).state_dict())
    torch.save({"state_dict": nets[0]}, tmp_path / "a.pt")
    save_file({f"module.{k}": v.contiguous() for k, v in nets[1].items()}, str(tmp_path / "b.safetensors"))
    merged = {}
    for layout in ("bin", "py"):
        cifar10(tmp_path / layout, layout)
        out = tmp_path / f"m_{layout}"
        assert main(["merge", "--parents", str(tmp_path / "a.pt"), str(tmp_path / "b.safetensors"), "--dataset",
                     "cifar10", "--data-dir", str(tmp_path / layout), "--arch", f"{user_parents['code']}:make_net",
                     "--kw", "in_ch=3", "--classes", "0-4", "5-9", "--img-size", "16", "--mean", "0.5,0.5,0.5",
                     "--std", "0.25,0.25,0.25", "--method", "zipit", "--cut", "features.0", "--batch-size", "8",
                     "--stats-images", "16", "--reset-images", "16", "--out", str(out), "--json", "--quiet"]) == 0
        assert 0 <= json.loads(capsys.readouterr().out)["joint_acc"] <= 1
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["data"]["name"] == "cifar10"
        assert manifest["data"]["source"].endswith(f"cifar-10-batches-{layout}")
        assert manifest["parents"][1]["spec"]["input"]["img_size"] == 16
        merged[layout] = (out / "model.safetensors").read_bytes()
    assert merged["bin"] == merged["py"]


@pytest.mark.parametrize("command", ["merge", "sweep", "cuts", "eval", "landscape", "stats", "merge-same"])
def test_every_command_reading_parents_says_that_arch_runs_code(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--arch" in text and "importing it RUNS it" in text and "torchvision:NAME" in text


def test_module_form_is_recorded_with_its_code(user_parents, tmp_path, monkeypatch, capsys):
    """``package.module:FUNCTION``: the manifest hashes the module's source file as it does a FILE.py."""
    pkg = tmp_path / "lab_nets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "small.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = _merge_args(user_parents, "--method", "zipit", "--cut", "features.0", "--out", str(tmp_path / "m"))
    args[args.index("--arch") + 1] = "lab_nets.small:make_net"
    assert main(args) == 0
    entry = json.loads((tmp_path / "m" / "manifest.json").read_text())["parents"][0]
    assert entry["spec"]["arch"] == "lab_nets.small:make_net" and len(entry["arch_sha256"]) == 64
    again = ["merge", "--manifest", str(tmp_path / "m" / "manifest.json"), "--quiet"]
    assert main([*again, "--out", str(tmp_path / "again")]) == 0
    redone = (tmp_path / "again" / "model.safetensors").read_bytes()
    assert redone == (tmp_path / "m" / "model.safetensors").read_bytes()
    (pkg / "small.py").write_text(NET + "\n# edited\n")
    capsys.readouterr()
    assert main([*again, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "lab_nets/small.py is missing or changed since the manifest was written" in err
