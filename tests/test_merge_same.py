"""``mudsc merge-same`` end to end on tiny digits models, and align-then-fuse hybrids."""
import json

import pytest
import torch
from unit_helpers import small_mlp

from mudsc.cli import main
from mudsc.diffinit.config import make_config
from mudsc.diffinit.fuse import transform_state_dict
from mudsc.diffinit.session import MergeSession
from mudsc.errors import ConfigError
from mudsc.methods import names
from mudsc.models import model_from_spec
from mudsc.models.checkpoint import load_model, save_model, sha256_file
from mudsc.sameinit.hybrid import aligned_state_dicts
from mudsc.sameinit.merge import METHODS
from mudsc.unitgraph import trace
from mudsc.zoo.finetune import finetune_parent

TASKS = ("0-4", "5-9")
HYBRIDS = names("align-then-fuse")


@pytest.fixture(scope="module")
def zoo(same_init_family):
    return same_init_family


def _merge(zoo, tmp_path, method, *extra):
    _, base, paths = zoo
    out = tmp_path / method
    argv = ["--device", "cpu", "merge-same", "--base", str(base), "--models", *map(str, paths), "--method", method,
            "--dataset", "digits", "--stats-examples", "64", "--cg-iterations", "10", "--epochs", "3", "--lr", "5e-3",
            "--out", str(out), "--json", *extra]
    return main(argv), out


@pytest.mark.parametrize("method", METHODS + ("multitask",))
def test_every_method_writes_loadable_task_models(zoo, tmp_path, capsys, method):
    _, base, paths = zoo
    rc, out = _merge(zoo, tmp_path, method)
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tasks"] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert printed["per_task_acc"] == pytest.approx(sum(printed["task_acc"]) / 2)
    if method in ("average", "regmean", "mats", "multitask"):
        assert min(printed["task_acc"]) > 0.4  # 5 classes: chance is 0.2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == method and manifest["metrics"]["task_acc"] == printed["task_acc"]
    assert manifest["inputs"]["base"]["sha256"] == sha256_file(base)
    assert [m["sha256"] for m in manifest["inputs"]["models"]] == [sha256_file(p) for p in paths]
    merged = [load_model(out / o["path"]) for o in manifest["outputs"]]
    bodies = [{k: v for k, v in m.state_dict().items() if k.startswith("body.")} for m, _ in merged]
    assert all(torch.equal(bodies[0][k], bodies[1][k]) for k in bodies[0])  # one body, two heads
    for (m, info), p in zip(merged, paths):
        original = load_model(p)[0]
        assert m.classes == original.classes and info["merge"]["method"] == method
        if method != "multitask":  # heads are the task models' own
            assert torch.equal(m.state_dict()["head.fc.weight"], original.state_dict()["head.fc.weight"])
    if method == "mats":
        solved = [layer for layer in manifest["layers"] if layer["how"] == "cg"]
        assert solved and all(layer["residual"] is not None and layer["iterations"] <= 10 for layer in solved)
        assert manifest["max_residual"] == max(layer["residual"] for layer in solved)


def test_bn_reset_is_on_by_default_and_reported(zoo, tmp_path, capsys):
    _, _, paths = zoo
    rc, out = _merge(zoo, tmp_path, "average", "--no-bn-reset")
    assert rc == 0 and "before_bn_reset" not in json.loads(capsys.readouterr().out)
    key = "body.layers.2.running_mean"
    kept = load_model(out / "task0.safetensors")[0].state_dict()[key]
    mean = torch.stack([load_model(p)[0].state_dict()[key] for p in paths]).mean(0)
    assert torch.allclose(kept, mean)
    rc, out = _merge(zoo, tmp_path, "regmean")
    printed = json.loads(capsys.readouterr().out)
    assert rc == 0 and set(printed["before_bn_reset"]) == {"joint_acc", "per_task_acc", "task_acc"}
    reset = [load_model(out / f"task{i}.safetensors")[0].state_dict()[key] for i in range(2)]
    assert torch.equal(reset[0], reset[1]) and not torch.allclose(reset[0], mean)
    assert json.loads((out / "manifest.json").read_text())["bn_reset"] == {"applied": True, "images": 1000}


def test_stats_files_from_mudsc_stats_are_used_and_checked(zoo, tmp_path, capsys):
    _, _, paths = zoo
    stats = []
    for i, p in enumerate(paths):
        s = tmp_path / f"s{i}.safetensors"
        assert main(["--device", "cpu", "stats", "--model", str(p), "--dataset", "digits", "--examples", "64",
                     "--out", str(s)]) == 0
        stats.append(str(s))
    capsys.readouterr()
    rc, out = _merge(zoo, tmp_path, "regmean", "--stats", *stats)
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["path"] for s in manifest["inputs"]["stats"]] == stats
    rc, _ = _merge(zoo, tmp_path, "regmean", "--stats", stats[1], stats[0])
    assert rc == 2 and "computed for another model" in capsys.readouterr().err
    rc, _ = _merge(zoo, tmp_path, "mats", "--stats", stats[0])
    assert rc == 2 and "one per model" in capsys.readouterr().err
    rc, _ = _merge(zoo, tmp_path, "fisher", "--stats", stats[0], str(tmp_path / "missing.safetensors"))
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    gram_only = []
    for i, p in enumerate(paths):
        s = tmp_path / f"g{i}.safetensors"
        assert main(["--device", "cpu", "stats", "--model", str(p), "--dataset", "digits", "--examples", "64",
                     "--parts", "gram", "--out", str(s)]) == 0
        gram_only.append(str(s))
    capsys.readouterr()
    assert _merge(zoo, tmp_path, "regmean", "--stats", *gram_only)[0] == 0  # RegMean reads only the Gram
    rc, _ = _merge(zoo, tmp_path, "fisher", "--stats", *gram_only)
    assert rc == 2 and "hold no diagonal Fisher" in capsys.readouterr().err


def test_bad_input_exits_2_without_a_traceback(zoo, tmp_path, capsys):
    root, base, paths = zoo
    other = tmp_path / "wide.safetensors"
    save_model(small_mlp((0, 1, 2, 3, 4), width=40), other)
    stranger = tmp_path / "stranger.safetensors"
    finetune_parent(other, dataset="digits", classes="5-9", seed=0, out=stranger, epochs=1, device="cpu")
    cases = [
        (["--method", "soup"], "unknown method 'soup'"),
        (["--method", "permute+ties"], "unknown method"),
        (["--method", "regmean", "--models", str(paths[0]), str(other)], "shape"),
        (["--method", "average", "--models", str(paths[0]), str(stranger)], "another base"),
        (["--method", "average", "--no-base"], "needs --base"),
        (["--method", "permute+regmean"], "takes no --base"),
        (["--method", "mats", "--init", "avg"], "neither one of"),
        (["--method", "ties", "--density", "1.5"], "ties_density"),
    ]
    for extra, message in cases:
        argv = ["--device", "cpu", "merge-same", "--base", str(base), "--models", *map(str, paths),
                "--dataset", "digits", "--stats-examples", "32", "--out", str(tmp_path / "o")]
        if "--no-base" in extra:
            argv = [a for a in argv if a not in ("--base", str(base))]
            extra = [e for e in extra if e != "--no-base"]
        assert main(argv + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)


def _permuted_copy(model):
    graph = trace(model)
    g = torch.Generator().manual_seed(1)
    maps = {}
    for s in graph.spaces:
        p = torch.eye(s.size)[torch.randperm(s.size, generator=g)]
        maps[s.name] = (p, p.T)
    copy = model_from_spec(model.spec)
    copy.load_state_dict(transform_state_dict(model.state_dict(), graph, maps))
    return copy.eval()


def test_permuted_copy_aligned_and_fused_with_regmean_reproduces_the_model(digits, tmp_path, capsys):
    a = small_mlp((0, 1, 2, 3, 4), head="shared", depth=2, width=24, norm="none")
    b = _permuted_copy(a)
    x = digits.eval.x[:64]
    with torch.no_grad():
        ref = a(x)
        assert (b(x) - ref).abs().max() < 1e-5 and not torch.equal(a.state_dict()["body.layers.1.weight"],
                                                                   b.state_dict()["body.layers.1.weight"])
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_model(a, pa)
    save_model(b, pb)
    out = tmp_path / "hybrid"
    assert main(["--device", "cpu", "merge-same", "--models", str(pa), str(pb), "--method", "permute+regmean",
                 "--dataset", "digits", "--stats-examples", "64", "--align-images", "250", "--out", str(out),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for i in range(2):
        merged = load_model(out / f"task{i}.safetensors")[0]
        with torch.no_grad():
            got = merged(x)
        assert (got - ref).norm() <= 1e-4 * ref.norm()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["alignment"]["method"] == "permute" and manifest["config"]["method"] == "regmean"
    assert printed["joint_acc"] == manifest["metrics"]["joint_acc"]


def test_align_then_average_is_the_engines_alignment_merge(digits, tmp_path):
    from mudsc.sameinit.hybrid import align_parents, average_state_dict

    a = small_mlp((0, 1, 2, 3, 4), seed=0, head="shared", width=24)
    b = small_mlp((5, 6, 7, 8, 9), seed=1, head="shared", width=24)
    engine = MergeSession([a, b], digits, stats_images=250).merge(make_config(method="permute", reset_bn=False))
    aligned = align_parents([a, b], digits, method="permute", stats_images=250, device="cpu")
    ours = average_state_dict([m.state_dict() for m in aligned.models])
    for k, v in engine.state_dict.items():
        assert torch.allclose(ours[k], v, atol=1e-6), k
    assert all(f"permute+{f}" in HYBRIDS for f in ("average", "fisher", "regmean", "mats"))


def test_alignment_that_merges_within_a_parent_is_refused():
    model = small_mlp((0, 1), width=4, depth=1, norm="none")
    graph = trace(model)
    space = graph.spaces[0]
    n = space.size

    class Zipped:  # units 0 and 1 of parent 0 share a merged unit
        def parts(self):
            u0 = torch.eye(n)
            u0[1] = u0[0]
            m0 = u0.T / u0.sum(0).clamp_min(1)[:, None] / 2
            return [(m0, u0), (torch.eye(n) / 2, torch.eye(n))]

    with pytest.raises(ConfigError, match="not a one-to-one matching"):
        aligned_state_dicts([model.state_dict()] * 2, graph, {space.name: Zipped()})


@pytest.mark.parametrize("method", ["mats", "ties", "permute+regmean"])
def test_manifest_reproduces_the_merge_bit_for_bit(zoo, tmp_path, capsys, method):
    _, base, paths = zoo
    if "+" in method:  # align-then-fuse: the parents themselves, no base
        argv = ["--device", "cpu", "merge-same", "--models", *map(str, paths), "--method", method, "--dataset",
                "digits", "--stats-examples", "64", "--cg-iterations", "10", "--align-images", "250",
                "--out", str(tmp_path / "first"), "--json"]
        assert main(argv) == 0
        out = tmp_path / "first"
    else:
        rc, out = _merge(zoo, tmp_path, method, "--density", "0.3", "--reset-images", "300")
        assert rc == 0
    first = json.loads(capsys.readouterr().out)
    again = tmp_path / "again"
    assert main(["--device", "cpu", "merge-same", "--manifest", str(out / "manifest.json"), "--out", str(again),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["task_acc"] == first["task_acc"]
    manifest = json.loads((out / "manifest.json").read_text())
    for o in manifest["outputs"]:
        assert (again / o["path"]).read_bytes() == (out / o["path"]).read_bytes()
    redone = json.loads((again / "manifest.json").read_text())
    assert redone["config"] == manifest["config"] and redone["session"] == manifest["session"]


def test_manifest_with_a_changed_input_is_refused(zoo, tmp_path, capsys):
    _, base, paths = zoo
    rc, out = _merge(zoo, tmp_path, "average")
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["inputs"]["models"][0]["sha256"] = "0" * 64
    (tmp_path / "edited.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["--device", "cpu", "merge-same", "--manifest", str(tmp_path / "edited.json"), "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "changed since the manifest was written" in err and "Traceback" not in err
    (tmp_path / "plain.json").write_text("{}")
    assert main(["--device", "cpu", "merge-same", "--manifest", str(tmp_path / "plain.json"), "--out",
                 str(tmp_path / "x")]) == 2
    assert "not a mudsc merge-same manifest" in capsys.readouterr().err
