"""The statistics pass: float32 chunked products against float64, seeded spatial subsampling, and the
memory refusal of a merge that cannot fit."""
import pytest
import torch

from mudsc.diffinit.stats import accumulate_moments, finalise, tap_rows
from mudsc.models import create_model
from mudsc.unitgraph import observed, trace


def _pair(arch="resnet20", **kw):
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(create_model(arch, classes=(0, 1, 2, 3, 4), num_classes=10, in_chans=3, img_size=16,
                                   **kw).eval())
    return models, trace(models[0])


def _images(n=40):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 + 0.5


def test_moments_stay_within_1e6_of_float64():
    models, graph = _pair(width=1)
    x = _images()
    got = accumulate_moments(models, graph, x, batch_size=20, device="cpu", chunk_size=512)
    watched = [observed(m, graph) for m in models]
    ref: dict[str, list] = {}
    with torch.no_grad():
        for s in range(0, len(x), 20):
            acts = [w(x[s:s + 20])[1] for w in watched]
            for sp in graph.spaces:
                f = torch.cat([torch.cat([tap_rows(a, t.dim, None) for a, t in zip(ac[sp.name], sp.taps)], 0)
                               for ac in acts], 1).double()
                r = ref.setdefault(sp.name, [0.0, 0.0, 0])
                r[0], r[1], r[2] = r[0] + f.sum(0), r[1] + f.T @ f, r[2] + len(f)
    for name, (sx, sxx, n) in ref.items():
        assert got.count[name] == n
        d = sxx.diagonal()
        live = d > 0
        scale = torch.outer(d, d).sqrt()[live][:, live]  # Cauchy-Schwarz bound of each entry
        assert ((got.sum_xx[name] - sxx)[live][:, live].abs() / scale).max() < 1e-6, name
        assert ((got.sum_x[name] - sx).abs() <= 1e-6 * sx.abs()).all(), name
        assert torch.equal(got.sum_xx[name], got.sum_xx[name].T)  # the mirrored blocks are exact


def test_spatial_subsampling_is_seeded_and_reproducible():
    models, graph = _pair(width=1)
    x = _images()
    a = accumulate_moments(models, graph, x, batch_size=20, device="cpu", positions=5, seed=3)
    b = accumulate_moments(models, graph, x, batch_size=20, device="cpu", positions=5, seed=3)
    c = accumulate_moments(models, graph, x, batch_size=20, device="cpu", positions=5, seed=4)
    full = accumulate_moments(models, graph, x, batch_size=20, device="cpu")
    for name in a.sum_x:
        assert torch.equal(a.sum_xx[name], b.sum_xx[name])
        assert not torch.equal(a.sum_xx[name], c.sum_xx[name])
        taps = len(graph.space(name).taps)
        assert a.count[name] == len(x) * 5 * taps < full.count[name]
    # the same positions for every parent: a parent's units correlate with its own copy perfectly
    twin = finalise(accumulate_moments([models[0], models[0]], graph, x, batch_size=20, device="cpu", positions=5))
    name = graph.spaces[0].name
    n = graph.space(name).size
    corr, std = twin.corr[name], twin.std[name][:n]
    live = torch.arange(n)[std > 0]
    assert torch.allclose(corr[live, n + live], torch.ones(len(live)), atol=1e-5)


def test_session_records_positions_in_the_config(digits):
    from mudsc.diffinit.config import MergeConfig, make_config
    from mudsc.diffinit.session import MergeSession

    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(create_model("cnn", classes=(0, 1, 2, 3, 4), num_classes=10, width=1, in_chans=1, img_size=8))
    session = MergeSession(models, digits, stats_images=250, eval_images=50)
    cfg = make_config(method="zipit", stats_positions=4, reset_bn=False)
    assert MergeConfig.from_yaml(cfg.to_yaml()) == cfg
    session.merge(cfg)
    assert session.activation_stats(positions=4).n_samples != session.activation_stats().n_samples


def test_a_merge_that_cannot_fit_is_refused_with_its_size(digits, monkeypatch, demo_parents, tmp_path, capsys):
    from mudsc.cli import main
    from mudsc.diffinit import memory
    from mudsc.diffinit.config import make_config
    from mudsc.diffinit.session import MergeSession
    from mudsc.errors import ResourceError

    models, _ = _pair(width=1)
    need = memory.merge_memory(models, trace(models[0]), [s.name for s in trace(models[0]).spaces],
                               make_config(method="mudsc-zip"), image=_images(1), batch_size=250, stats_needed=True)
    assert need["statistics"] > 250 * 2 * 16 * 16 * 16 * 4 and need["solve"] > 0 and need["weights"] > 0
    monkeypatch.setattr(memory, "available_memory", lambda device: 2 ** 20)  # a 1 MiB machine
    session = MergeSession.from_paths([str(p) for p in demo_parents], "digits", stats_images=250)
    with pytest.raises(ResourceError, match=r"needs about \d+\.\d GiB on cpu \(statistics .* but only 0\.0 GiB"):
        session.merge(make_config(method="mudsc-zip"))
    assert session._act == {}  # refused before the statistics pass started
    rc = main(["merge", "--parents", *map(str, demo_parents), "--dataset", "digits", "--out", str(tmp_path / "o"),
               "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "needs about" in err and len(err.splitlines()) == 1


def test_tiled_transposed_copy_is_exact():
    from mudsc.diffinit.transpose import copy_transposed_

    src = torch.randn(300, 200, dtype=torch.float64)  # several tiles each way, the last ones partial
    dst = torch.zeros(200, 300, dtype=torch.float64)
    assert torch.equal(copy_transposed_(dst, src, tile=64), src.T)
    whole = torch.randn(260, 260)  # blocks of one matrix, as the mirrored parent blocks of an [O, O] sum
    copy_transposed_(whole[130:, :130], whole[:130, 130:])
    assert torch.equal(whole[130:, :130], whole[:130, 130:].T)
