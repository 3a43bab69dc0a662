import torch

from mudsc.diffinit.fuse import apply_along_axis
from mudsc.diffinit.similarity import _pool, mix, weight_similarity
from mudsc.diffinit.solvers import greedy_zip


def test_pool_equals_dense_maps():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 40, generator=g)
    sim = torch.corrcoef(z)
    match = greedy_zip(sim, (6, 6), a=0.5, b=1.0)
    w = torch.randn(5, 6 * 3, 4, generator=g)  # axis 1 holds 6 units, 3 entries each (a flatten)
    for i, (m, u) in enumerate(match.parts()):
        for merge_side, dense in ((True, m), (False, u.T)):
            got = _pool(w, 1, 0, 6, 3, m, u, merge_side=merge_side)
            want = apply_along_axis(w, 1, [(0, 6, 3, dense)])
            assert torch.allclose(got, want, atol=1e-6), (i, merge_side)


def test_weight_similarity_metrics():
    z = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 2.0, 1.0]])
    s = weight_similarity(z)
    assert torch.allclose(s[0, 1], torch.tensor(1.0)) and torch.allclose(s[0, 2], torch.tensor(-1.0))
    assert torch.allclose(weight_similarity(z, metric="inner")[0, 1].float(), torch.tensor(28.0))
    cos = weight_similarity(z + 10, metric="cosine")
    assert cos[0, 2] > 0.9  # cosine does not centre, Pearson does


def test_mix_published_and_standardized():
    s_w = torch.full((4, 4), 0.5) + 0.01 * torch.eye(4)
    s_a = torch.rand(4, 4, generator=torch.Generator().manual_seed(1))
    s_a = (s_a + s_a.T) / 2
    assert torch.equal(mix(s_w, s_a, 0.0), s_a) and torch.equal(mix(s_w, s_a, 1.0), s_w)
    assert torch.allclose(mix(s_w, s_a, 0.25), 0.25 * s_w + 0.75 * s_a)
    std = mix(s_w, s_a, 0.5, mode="standardized")
    off = ~torch.eye(4, dtype=torch.bool)
    # after standardising, the nearly constant S_W adds nothing to the ranking of off-diagonal pairs
    assert torch.equal(std[off].argsort(), s_a[off].argsort())


def test_descriptors_read_only_their_neighbours_maps():
    """The iterative solve reuses a space's S_W while its neighbours' matches are unchanged: that is
    only exact if descriptors() reads nothing but the maps descriptor_neighbours() names."""
    from mudsc.unitgraph import trace
    from mudsc.models import create_model
    from mudsc.diffinit.similarity import descriptor_neighbours, descriptors

    sds = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("resnet20", classes=(0, 1), num_classes=10, in_chans=1, img_size=8, width=1)
        sds.append(model.state_dict())
    graph = trace(model)
    g = torch.Generator().manual_seed(3)
    maps = {}
    for s in graph.spaces:
        z = torch.randn(2 * s.size, 8, generator=g)
        maps[s.name] = greedy_zip(torch.corrcoef(z), (s.size, s.size), a=0.5, b=1.0).parts()
    some_have_neighbours = False
    for s in graph.spaces:
        near = descriptor_neighbours(graph, s.name)
        assert s.name not in near
        some_have_neighbours |= bool(near)
        full = descriptors(sds, graph, s.name, {q: m for q, m in maps.items() if q != s.name})
        only = descriptors(sds, graph, s.name, {q: maps[q] for q in near})
        assert torch.equal(full, only), s.name
    assert some_have_neighbours
