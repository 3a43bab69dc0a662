"""SameInitSession: every method through one session, cached results, statistics computed once per
part, the same files as ``mudsc merge-same``, and align-then-fuse with one alignment."""
import json

import pytest
import torch
from safetensors.torch import load_file
from unit_helpers import small_mlp

import mudsc.sameinit.session as session_mod
from mudsc.cli import main
from mudsc.errors import ConfigError, UnknownNameError
from mudsc.methods import names
from mudsc.models.checkpoint import load_model
from mudsc.sameinit.config import MultitaskConfig, SameInitConfig
from mudsc.sameinit.registry import registered
from mudsc.sameinit.session import SameInitSession

CONFIGS = [SameInitConfig(method=m, iterations=10) for m in names("same-init")] + [MultitaskConfig(epochs=1)]


@pytest.fixture(scope="module")
def zoo(same_init_family):
    return same_init_family[1:]


def _session(zoo, digits, **kw):
    base, paths = zoo
    return SameInitSession(load_model(base)[0], [load_model(p)[0] for p in paths], digits, stats_examples=64,
                           device="cpu", **kw)


@pytest.fixture(scope="module")
def session(zoo, digits):
    return _session(zoo, digits)


@pytest.fixture
def stats_calls(monkeypatch):
    """The parts of every compute_stats call the session makes."""
    calls = []

    def counting(*args, parts, **kwargs):
        calls.append(tuple(parts))
        return real(*args, parts=parts, **kwargs)

    real = session_mod.compute_stats
    monkeypatch.setattr(session_mod, "compute_stats", counting)
    return calls


def test_every_same_init_method_is_registered():
    assert set(registered()) == set(names("same-init"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.method)
def test_session_merges_each_method(session, config):
    result = session.merge(config)
    assert result.method == config.method and result.config == config
    assert result.tasks == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    bodies = [{k: v for k, v in m.state_dict().items() if k.startswith("body.")} for m in result.models]
    assert all(torch.equal(bodies[0][k], bodies[1][k]) for k in bodies[0])  # one body, two heads
    assert result.metrics.per_task == pytest.approx(sum(result.metrics.tasks) / 2)
    if config.method == "multitask":
        assert result.report is None and result.before_bn_reset is None and "train" in result.timings
    else:
        assert result.report.config == config and result.before_bn_reset is not None  # the body has BatchNorm
        assert min(result.metrics.tasks) > 0.3  # 5 classes: chance is 0.2
    json.dumps(result.summary())


def test_same_config_is_served_from_the_cache(session):
    config = SameInitConfig(method="ties", ties_density=0.5)
    first = session.merge(config)
    assert session.merge(SameInitConfig.from_dict(config.to_dict())) is first
    assert session.merge(SameInitConfig(method="ties", ties_density=0.4)) is not first


def test_new_knob_remerges_without_recomputing_statistics(zoo, digits, stats_calls):
    session = _session(zoo, digits)
    first = session.merge(SameInitConfig(method="regmean"))
    assert stats_calls == [("gram",)] * 2 and "stats" in first.timings
    second = session.merge(SameInitConfig(method="regmean", alpha=0.5))
    assert stats_calls == [("gram",)] * 2 and "stats" not in second.timings
    assert not torch.equal(first.models[0].state_dict()["body.layers.1.weight"],
                           second.models[0].state_dict()["body.layers.1.weight"])
    kfac = session.merge(SameInitConfig(method="mats", iterations=10))  # adds the gradient factors only
    session.merge(SameInitConfig(method="mats", iterations=5))
    session.merge(SameInitConfig(method="mats", objective="regmean", iterations=5))
    assert stats_calls == [("gram",)] * 2 + [("grad",)] * 2
    session.merge(SameInitConfig(method="fisher"))
    session.merge(SameInitConfig(method="fisher", damping=0.1))
    assert stats_calls == [("gram",)] * 2 + [("grad",)] * 2 + [("fisher",)] * 2
    # parts computed apart (same examples, same sampled labels) equal those computed in one pass
    fresh = _session(zoo, digits).merge(SameInitConfig(method="mats", iterations=10))
    assert stats_calls[-2:] == [("gram", "grad")] * 2
    assert all(torch.equal(kfac.models[0].state_dict()[k], v) for k, v in fresh.models[0].state_dict().items())


def test_session_writes_what_the_cli_writes(zoo, digits, tmp_path, capsys):
    base, paths = zoo
    cli_out, ours = tmp_path / "cli", tmp_path / "session"
    assert main(["--device", "cpu", "merge-same", "--base", str(base), "--models", *map(str, paths), "--method", "mats",
                 "--dataset", "digits", "--stats-examples", "64", "--cg-iterations", "10", "--out", str(cli_out),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    session = SameInitSession.from_paths(paths, base=base, dataset="digits", stats_examples=64, device="cpu")
    result = session.merge(SameInitConfig(method="mats", iterations=10))
    assert session.save(result, ours)["outputs"] == [{"path": f"task{i}.safetensors", "task": t}
                                                     for i, t in enumerate(result.tasks)]
    assert {**result.summary(), "out": str(cli_out)} == printed
    manifest, written = (json.loads((out / "manifest.json").read_text()) for out in (cli_out, ours))
    assert set(written["timings"]) == set(manifest["timings"]) == {"stats", "merge", "bn_reset"}
    assert {k: v for k, v in written.items() if k != "timings"} == {k: v for k, v in manifest.items() if k != "timings"}
    for o in manifest["outputs"]:
        a, b = load_file(cli_out / o["path"]), load_file(ours / o["path"])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_aligned_session_aligns_once_and_fuses(digits, monkeypatch):
    calls = []
    real = session_mod.align_parents
    monkeypatch.setattr(session_mod, "align_parents", lambda *a, **kw: calls.append(kw["method"]) or real(*a, **kw))
    a = small_mlp((0, 1, 2, 3, 4), seed=0, head="shared", width=24)
    b = small_mlp((5, 6, 7, 8, 9), seed=1, head="shared", width=24)
    session = SameInitSession(None, [a, b], digits, align="permute", align_images=250, stats_examples=64,
                              device="cpu")
    fused = session.merge(SameInitConfig(method="regmean"))
    averaged = session.merge(SameInitConfig(method="average"))
    assert calls == ["permute"] and "align" in session.timings
    assert (fused.method, averaged.method) == ("permute+regmean", "permute+average")
    assert session.manifest(fused)["alignment"]["method"] == "permute"
    with pytest.raises(UnknownNameError, match="unknown method 'permute\\+ties'"):
        session.merge(SameInitConfig(method="ties"))


def test_session_needs_a_base_or_an_alignment(zoo, digits):
    base, paths = zoo
    models = [load_model(p)[0] for p in paths]
    with pytest.raises(ConfigError, match="either the base"):
        SameInitSession(None, models, digits)
    with pytest.raises(ConfigError, match="either the base"):
        SameInitSession(load_model(base)[0], models, digits, align="permute")
