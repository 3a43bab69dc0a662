"""End to end on digits: base -> ``zoo finetune`` per task -> ``stats`` -> same-init merges."""
import argparse
import json

import pytest
import torch

from mudsc.cli import finetune as finetune_cmd
from mudsc.cli import stats as stats_cmd
from mudsc.errors import CheckpointError
from mudsc.models import create_model
from mudsc.models.checkpoint import load_model, save_model
from mudsc.sameinit.config import SameInitConfig
from mudsc.sameinit.merge import merge_same_init
from mudsc.sameinit.taskstats import load_stats


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mudsc")
    p.add_argument("--device", default="cpu")
    sub = p.add_subparsers(dest="command", required=True)
    stats_cmd.register(sub)
    zsub = sub.add_parser("zoo").add_subparsers(dest="zoo_command", required=True)
    finetune_cmd.add_finetune(zsub)
    return p


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def task_models(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("sameinit")
    torch.manual_seed(0)
    base = create_model("mlp", classes=tuple(range(10)), num_classes=10, head="own", in_chans=1, img_size=8,
                        feat_dim=16, depth=1, width=32)
    save_model(base, root / "base.safetensors")
    paths = []
    for i, task in enumerate(("0-4", "5-9")):
        out = root / f"task{i}.safetensors"
        assert _run(["zoo", "finetune", "--base", str(root / "base.safetensors"), "--dataset", "digits",
                     "--classes", task, "--seed", str(i), "--epochs", "3", "--batch-size", "32", "--lr", "3e-3", "--out", str(out)]) == 0
        assert _run(["stats", "--model", str(out), "--dataset", "digits", "--examples", "120",
                     "--out", str(root / f"task{i}.stats.safetensors")]) == 0
        paths.append(out)
    return root, paths


def test_finetuned_models_share_the_base_and_learn(task_models):
    root, paths = task_models
    base, _ = load_model(root / "base.safetensors")
    for p in paths:
        model, info = load_model(p)
        assert info["base"]["path"] == str(root / "base.safetensors") and len(info["base"]["sha256"]) == 64
        assert model.output_classes == tuple(info["task"]) and info["accuracy"] > 0.7
        key = "body.layers.1.weight"
        assert not torch.equal(model.state_dict()[key], base.state_dict()[key])


def test_stats_file_records_its_provenance(task_models):
    root, paths = task_models
    s = load_stats(root / "task1.stats.safetensors")
    assert s.count == 120 and s.fisher_kind == "sampled"
    assert s.metadata["classes"] == "5,6,7,8,9" and s.metadata["split"] == "train"
    assert set(s.gram) == {"body.layers.1.weight", "body.layers.3.weight", "head.fc.weight"}


def test_merged_bodies_work_with_each_task_head(task_models, digits):
    from mudsc.evaluate import accuracy

    root, paths = task_models
    base_sd = load_model(root / "base.safetensors")[0].state_dict()
    sds = [load_model(p)[0].state_dict() for p in paths]
    stats = [load_stats(root / f"task{i}.stats.safetensors") for i in range(2)]
    for method in ("average", "regmean", "mats"):
        merged, report = merge_same_init(base_sd, sds, stats, config=SameInitConfig(method=method), device="cpu")
        json.dumps(report.to_dict())
        for p in paths:
            model = load_model(p)[0]
            model.load_state_dict({**model.state_dict(), **{k: v for k, v in merged.items() if k.startswith("body.")}})
            assert accuracy(model, digits.eval, model.classes, device="cpu") > 0.3  # 5 classes: chance is 0.2


def test_finetune_rejects_a_base_of_other_geometry(tmp_path):
    base = create_model("mlp", classes=(0, 1), num_classes=10, head="own", in_chans=1, img_size=28, feat_dim=16,
                        depth=1, width=8)
    save_model(base, tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="28px"):
        _run(["zoo", "finetune", "--base", str(tmp_path / "b.safetensors"), "--dataset", "digits", "--classes", "0-4",
              "--out", str(tmp_path / "t.safetensors")])


def test_task_family_fine_tunes_one_base_per_task(tmp_path):
    from mudsc.zoo.finetune import task_family

    base, paths = task_family(tmp_path, dataset="digits", arch="mlp", tasks=["0-4", "5-9"], epochs=1, device="cpu",
                              width=16)
    assert base == tmp_path / "base.safetensors" and [p.name for p in paths] == ["task0.safetensors", "task1.safetensors"]
    models = [load_model(p) for p in paths]
    assert [tuple(m.classes) for m, _ in models] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert all(info["base"]["path"] == str(base) for _, info in models)
    assert [info["seed"] for _, info in models] == [1, 2]
