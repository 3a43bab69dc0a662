"""The merge engine end to end on tiny models: self-merges recover permutations, presets agree,
partial zipping and the manifest round trip, and bad input."""
import json

import pytest
import torch

from mudsc.diffinit.config import make_config
from mudsc.diffinit.fuse import transform_state_dict
from mudsc.diffinit.session import MergeSession
from mudsc.errors import ConfigError, UnknownNameError
from mudsc.models import create_model
from mudsc.models.checkpoint import load_model
from mudsc.unitgraph.coverage import random_permutations


def _model(arch, seed=0, classes=(0, 1, 2, 3, 4), head="shared", **kw):
    torch.manual_seed(seed)
    return create_model(arch, classes=classes, num_classes=10, head=head, in_chans=1, img_size=8,
                        feat_dim=16, **kw).eval()


def _permuted_copy(model, graph, seed):
    """The same function with every unit space permuted (grouped spaces: groups and units inside, tied
    groups alike; rigid spaces: whole groups only)."""
    perms = random_permutations(graph, torch.Generator().manual_seed(seed))
    maps = {name: (torch.eye(len(perm))[perm], torch.eye(len(perm))[perm].T) for name, perm in perms.items()}
    copy = _model_like(model)
    copy.load_state_dict(transform_state_dict(model.state_dict(), graph, maps))
    return copy.eval(), perms


def _model_like(model):
    from mudsc.models import model_from_spec

    return model_from_spec(model.spec)


ARCHS = [("mlp", {"width": 24}), ("resnet20", {"width": 1}), ("resnet20gn", {"width": 1, "groups": 4}),
         ("timm:vit_tiny_patch16_224", {"patch_size": 2, "depth": 2, "num_heads": 3, "embed_dim": 24}),
         # rotary q/k: a rigid space, whose heads the copy permutes as wholes
         ("timm:eva02_tiny_patch14_224", {"patch_size": 2, "depth": 2, "num_heads": 3, "embed_dim": 24})]


CASES = [(arch, kw, method) for arch, kw in ARCHS for method in ("permute", "rebasin", "mudsc-align")]
# Zip may merge within a model when units are dead or duplicated, so it runs on a trained parent.
CASES += [("demo", {}, method) for method in ("zipit", "mudsc-zip")]


@pytest.mark.parametrize("arch,kw,method", CASES, ids=[f"{a.split('_')[0]}-{m}" for a, _, m in CASES])
def test_self_merge_recovers_permutation(digits, demo_parents, arch, kw, method):
    a = load_model(demo_parents[0])[0] if arch == "demo" else _model(arch, **kw)
    from mudsc.unitgraph import trace

    b, perms = _permuted_copy(a, trace(a), seed=1)
    session = MergeSession([a, b], digits, stats_images=250, eval_images=100)
    result = session.merge(make_config(method=method, reset_bn=False, max_sweeps=20))
    stats = session.activation_stats()
    for name, match in result.solution.matches.items():
        (m_a, u_a), (m_b, u_b) = match.parts()
        # Units dead on the statistics images correlate with nothing: any partner is as good.
        alive = stats.std[name][: len(u_a)] > 0
        # unit c of the copy is unit perm[c] of the original: both land in the same merged unit
        got, want = u_b.argmax(1), u_a.argmax(1)[perms[name]]
        assert torch.equal(got[alive[perms[name]]], want[alive[perms[name]]]), f"{method} missed {name}"
    x = digits.eval.x[:32]
    with torch.no_grad():
        ref, out = a(x), result.model(x)
    assert (out - ref).norm() <= 1e-5 * ref.norm() + 1e-6


def test_mudsc_zip_at_alpha_zero_is_zipit(demo_parents, digits):
    parents = [load_model(p)[0] for p in demo_parents]
    session = MergeSession(parents, digits, stats_images=250, eval_images=200)
    zipit = session.merge(make_config(method="zipit"))
    mudsc0 = session.merge(make_config(method="mudsc-zip", alpha=0.0))
    assert all(torch.equal(zipit.state_dict[k], mudsc0.state_dict[k]) for k in zipit.state_dict)
    # alpha = 1 differs from wzip only in its start: MuDSC initialises from the activation solution.
    assert mudsc0.solution.sweeps == 0 and session.merge(make_config(method="wzip", max_sweeps=2)).solution.sweeps > 0


def test_partial_zip_multihead_and_ensemble(demo_parents, digits, tmp_path):
    parents = [load_model(p)[0] for p in demo_parents]
    session = MergeSession(parents, digits, stats_images=250, eval_images=200)
    cuts = [c.name for c in session.graph.cuts]
    assert cuts == ["conv1"] + [f"layer{i}{b}" for i in (1, 2, 3) for b in (".0", ".1", "")]
    ens = session.merge(make_config(method="ensemble"))
    full = session.merge(make_config(method="zipit"))
    early = session.merge(make_config(method="zipit", cut="layer1"))
    assert early.multihead and not full.multihead
    # cost: one parent < partially zipped < ensemble
    assert full.params < early.params < ens.params and full.flops < early.flops < ens.flops
    # the ensemble keeps each parent's own-task accuracy
    own = [p["own_task_acc"] for p in session.parent_metrics()]
    assert ens.metrics.tasks == pytest.approx(own)
    session.paths = [str(p) for p in demo_parents]
    from mudsc.diffinit.manifest import save_merge

    save_merge(early, session, tmp_path / "early")
    loaded, info = load_model(tmp_path / "early" / "model.safetensors")
    x = digits.eval.x[:16]
    with torch.no_grad():
        for y0, y1 in zip(early.model(x), loaded(x)):
            assert torch.allclose(y0, y1, atol=1e-5)
    assert info["cut"] == "layer1"


def test_cli_merge_manifest_round_trip_is_bit_identical(demo_parents, tmp_path):
    from mudsc.cli import main

    args = ["merge", "--parents", *map(str, demo_parents), "--dataset", "digits", "--method", "mudsc-zip",
            "--alpha", "0.5", "--stats-images", "250", "--max-sweeps", "3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["config"]["method"] == "mudsc-zip" and len(manifest["parents"]) == 2
    assert set(manifest["transforms"]) and manifest["metrics"]["ensemble"]["joint_acc"] > 0.8
    assert main(["merge", "--manifest", str(tmp_path / "a" / "manifest.json"), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_cuts_command_lists_valid_cuts(demo_parents, capsys):
    from mudsc.cli import main

    assert main(["cuts", "--model", str(demo_parents[0]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["conv1"] + [f"layer{i}{b}" for i in (1, 2, 3) for b in (".0", ".1", "")] + ["full"]
    shares = [r["params_share"] for r in rows]
    assert shares == sorted(shares) and 0 < shares[0] and shares[-1] == 1.0
    assert all(0 < r["flops_share"] <= 1 for r in rows)


def test_bad_input(digits):
    a = _model("mlp", width=16)
    with pytest.raises(ConfigError, match="width or shape"):
        MergeSession([a, _model("mlp", width=24, seed=1, classes=(5, 6, 7, 8, 9))], digits)
    with pytest.raises(ConfigError, match="different architecture"):
        MergeSession([a, _model("cnn", width=1, classes=(5, 6, 7, 8, 9))], digits)
    with pytest.raises(Exception, match="overlap"):
        MergeSession([a, _model("mlp", width=16, seed=1, classes=(4, 5, 6))], digits)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        MergeSession([a, _model("mlp", width=16, seed=1, classes=(5, 6, 7, 8, 9))], digits, stats_images=10)
    own = [_model("mlp", width=16, head="own"), _model("mlp", width=16, seed=1, head="own", classes=(5, 6, 7, 8, 9))]
    session = MergeSession(own, digits, stats_images=250, eval_images=50)
    with pytest.raises(ConfigError, match="do not share an output space.*layers"):
        session.merge(make_config(method="zipit"))
    assert session.merge(make_config(method="zipit", cut=session.graph.cuts[-1].name)).multihead
    with pytest.raises(UnknownNameError, match="valid cuts"):
        session.merge(make_config(method="zipit", cut="nowhere"))
    with pytest.raises(ConfigError, match="alpha"):
        make_config(method="mudsc-zip", alpha=1.5)
    with pytest.raises(ConfigError, match="zip_b"):
        make_config(method="zipit", zip_b=-0.1)


def test_different_head_or_group_counts_are_refused(digits):
    a = _model("resnet20gn", width=1, groups=4)
    b = _model("resnet20gn", width=1, groups=8, seed=1, classes=(5, 6, 7, 8, 9))
    with pytest.raises(ConfigError, match="8 groups in unit space .* parent 0 has 4"):
        MergeSession([a, b], digits, stats_images=250)
    vit = dict(patch_size=2, depth=1, embed_dim=24)
    a = _model("timm:vit_tiny_patch16_224", num_heads=3, **vit)
    b = _model("timm:vit_tiny_patch16_224", num_heads=6, seed=1, classes=(5, 6, 7, 8, 9), **vit)
    with pytest.raises(ConfigError, match="6 attention heads"):
        MergeSession([a, b], digits, stats_images=250)


def test_nan_activations_name_the_space(digits):
    a = _model("mlp", width=16)
    b = _model("mlp", width=16, seed=1, classes=(5, 6, 7, 8, 9))
    with torch.no_grad():
        b.body.layers[1].bias[3] = float("inf")
    session = MergeSession([a, b], digits, stats_images=250)
    with pytest.raises(Exception, match="unit space 'body.layers"):
        session.merge(make_config(method="zipit"))


def test_cli_errors_exit_2(tmp_path, demo_parents, capsys):
    from mudsc.cli import main

    base = ["merge", "--parents", *map(str, demo_parents), "--dataset", "digits", "--out", str(tmp_path / "o")]
    assert main([*base, "--alpha", "2"]) == 2
    assert "alpha" in capsys.readouterr().err
    assert main([*base, "--cut", "layer9"]) == 2
    assert "valid cuts: conv1, layer1.0, layer1.1, layer1, layer2.0" in capsys.readouterr().err
    assert main([*base, "--method", "ensemble"]) == 2
    assert "nothing to export" in capsys.readouterr().err


def test_sweep_progress_counts_toward_the_stopping_rule(demo_parents, digits):
    parents = [load_model(p)[0] for p in demo_parents]
    session = MergeSession(parents, digits, stats_images=250, eval_images=200)
    events: dict[str, list[tuple[int, int]]] = {}

    def steps(stage: str, done: int, total: int) -> None:
        events.setdefault(stage, []).append((done, total))
    config = make_config(method="mudsc-zip", patience=2)
    result = session.merge(config, steps=steps)
    # every stage reports its start (a bar's clock and rate start there) and ends full
    assert list(events) == ["statistics", "sweeps", "BN reset", "evaluation"]
    assert all(e[0][0] == 0 and e[-1][0] == e[-1][1] > 0 for e in events.values()), events
    assert events["statistics"][0] == (0, 250)
    sweeps = result.solution.sweeps
    assert events["sweeps"][0] == (0, 1 + config.patience)  # the first sweep, then `patience` without gain
    calls = events["sweeps"][1:]
    assert [d for d, _ in calls] == list(range(1, sweeps + 1))
    # each total is the sweeps run so far plus those the stopping rule still needs, never max_sweeps (100)
    assert all(d < t <= d + config.patience for d, t in calls[:-1]) and calls[-1] == (sweeps, sweeps)
    history = result.solution.history
    for (d, t), score in zip(calls, history):
        improved = score > max(history[:d - 1], default=float("-inf"))
        assert improved == (t - d == config.patience) or d == sweeps
