import torch

from mudsc.diffinit.fuse import apply_along_axis, pool_units
from mudsc.diffinit.similarity import gram_part, mix, similarity_from_parts, weight_similarity
from mudsc.diffinit.solvers import greedy_zip


def test_pool_equals_dense_maps():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 40, generator=g)
    sim = torch.corrcoef(z)
    match = greedy_zip(sim, (6, 6), a=0.5, b=1.0)
    w = torch.randn(5, 6 * 3, 4, generator=g)  # axis 1 holds 6 units, 3 entries each (a flatten)
    for i, (m, u) in enumerate(match.parts()):
        for merge_side, dense in ((True, m), (False, u.T)):
            got = pool_units(w, 1, 0, 6, 3, m, u, merge_side=merge_side)
            want = apply_along_axis(w, 1, [(0, 6, 3, dense)])
            assert torch.allclose(got, want, atol=1e-6), (i, merge_side)


def test_weight_similarity_metrics():
    z = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 2.0, 1.0]])
    s = weight_similarity(z)
    assert torch.allclose(s[0, 1], torch.tensor(1.0)) and torch.allclose(s[0, 2], torch.tensor(-1.0))
    assert torch.allclose(weight_similarity(z, metric="inner")[0, 1].float(), torch.tensor(28.0))
    cos = weight_similarity(z + 10, metric="cosine")
    assert cos[0, 2] > 0.9  # cosine does not centre, Pearson does


def test_shifted_float32_parts_keep_the_spread_of_a_descriptor_far_from_zero():
    """Descriptors sitting at ~100 with a spread of ~0.01: raw float32 Gram parts would cancel to noise.
    Parts taken about one shift per row, summed over two column groups, give float64's S_W to 1e-6;
    a constant unit gets similarity 0 and the result is exactly symmetric."""
    g = torch.Generator().manual_seed(0)
    z = (100 + 0.01 * torch.randn(8, 300, generator=g)).double()  # weights are float32
    z[3] = 100.0
    left, right = z[:, :120].float(), z[:, 120:].float()
    shift = left.double().mean(1)  # near the rows' mean, not equal to it
    (g1, r1), (g2, r2) = gram_part(left, "pearson", 2, shift), gram_part(right, "pearson", 2, shift)
    got = similarity_from_parts(g1 + g2, r1 + r2, 300, "pearson")
    c = z - z.mean(1, keepdim=True)
    norm = c.norm(dim=1)
    want = (c @ c.T) / torch.outer(norm, norm).clamp_min(1e-300)
    want[3], want[:, 3] = 0.0, 0.0
    assert torch.equal(got, got.T)
    assert (got.double() - want).abs().max() < 1e-6
    raw = similarity_from_parts(*[a + b for a, b in zip(gram_part(left, "pearson", 2), gram_part(right, "pearson", 2))],
                                300, "pearson")
    assert (raw.double() - want).abs().max() > 1e-2  # what the shift is for


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


def _resnet20_pair():
    """Two random-init ResNet-20 state dicts (seeds 0 and 1) and their unit graph."""
    from mudsc.models import create_model
    from mudsc.unitgraph import trace

    sds = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("resnet20", classes=(0, 1), num_classes=10, in_chans=1, img_size=8, width=1)
        sds.append(model.state_dict())
    return sds, trace(model)


def test_descriptors_read_only_their_neighbours_maps():
    """The iterative solve reuses a space's S_W while its neighbours' matches are unchanged: that is
    only exact if descriptors() reads nothing but the maps descriptor_neighbours() names."""
    from mudsc.diffinit.similarity import descriptor_neighbours, descriptors

    sds, graph = _resnet20_pair()
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


def _two_layer_graph():
    from mudsc.unitgraph import UnitGraph

    ref = lambda p, axis, role: {"param": p, "axis": axis, "role": role}  # noqa: E731
    return UnitGraph.from_dict({"spaces": [
        {"name": "h1", "size": 2, "producers": [ref("fc1.weight", 0, "out")],
         "consumers": [ref("fc2.weight", 1, "in")], "taps": [{"node": "fc1", "dim": 1, "hook": "output"}]},
        {"name": "h2", "size": 2, "producers": [ref("fc2.weight", 0, "out"), ref("fc2.bias", 0, "out")],
         "consumers": [ref("fc3.weight", 1, "in")], "taps": [{"node": "fc2", "dim": 1, "hook": "output"}]},
    ]})


def test_descriptor_pools_consumer_axes_with_n_times_the_merge_map():
    """MuDSC's code stores ``merge * len(self.params)``: a neighbour's consumer axis is pooled with
    N * M. Here h1 merges units 0, 1 of parent 0 and unit 0 of parent 1 into one (M = 1/3 each, so
    N * M = 2/3) and keeps unit 1 of parent 1 alone (N * M = 2); values worked out by hand."""
    import numpy as np

    from mudsc.diffinit.similarity import descriptors
    from mudsc.diffinit.solvers.match import match_from_assignment

    sds = [{"fc1.weight": torch.zeros(2, 3), "fc2.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
            "fc2.bias": torch.tensor([5.0, 6.0]), "fc3.weight": torch.tensor([[7.0, 8.0]])},
           {"fc1.weight": torch.zeros(2, 3), "fc2.weight": torch.tensor([[-1.0, 0.0], [2.0, 1.0]]),
            "fc2.bias": torch.tensor([0.5, -0.5]), "fc3.weight": torch.tensor([[1.0, -2.0]])}]
    h1 = match_from_assignment(np.array([0, 0, 0, 1]), (2, 2), 0.0)
    got = descriptors(sds, _two_layer_graph(), "h2", {"h1": h1.parts()})
    # per unit of h2: fc2 row pooled into h1's two merged units, fc2 bias, fc3 column
    want = torch.tensor([[2.0, 0.0, 5.0, 7.0],
                         [14 / 3, 0.0, 6.0, 8.0],
                         [-2 / 3, 0.0, 0.5, 1.0],
                         [4 / 3, 2.0, -0.5, -2.0]])
    assert torch.allclose(got, want, atol=1e-6)


def _official_weight_vectors(sds, graph, space, matches):
    """The weight vectors as MuDSC's ``get_weight_vectors`` builds them, written out with dense
    matrices: every other axis of a tensor that belongs to a solved space q is multiplied by
    (N M_q_i) where the tensor consumes q's units and by U_q_i^T where it produces them."""
    n = len(sds)
    s = graph.space(space)
    rows = []
    for i, sd in enumerate(sds):
        parts = []
        for r in (r for r in s.refs if r.role != "stat"):
            w = sd[r.param].double()
            for q in graph.spaces:
                if q.name == space or q.name not in matches:
                    continue
                for qr in q.refs:
                    if qr.param != r.param or qr.axis == r.axis:
                        continue
                    m, u = matches[q.name].parts()[i]
                    side = (n * m if qr.role == "in" else u.T).double()
                    dense = torch.kron(side, torch.eye(qr.repeat, dtype=torch.float64))
                    moved = w.movedim(qr.axis, 0)
                    lo, hi = qr.start, qr.start + q.size * qr.repeat
                    block = dense @ moved[lo:hi].reshape(hi - lo, -1)
                    moved = torch.cat([moved[:lo], block.reshape(-1, *moved.shape[1:]), moved[hi:]])
                    w = moved.movedim(0, qr.axis)
            w = w.movedim(r.axis, 0)[r.start:r.start + s.size * r.repeat]
            parts.append(w.reshape(s.size, -1))
        rows.append(torch.cat(parts, 1))
    return torch.cat(rows)


def test_weight_similarity_equals_the_official_routine_on_resnet20():
    from mudsc.diffinit.similarity import descriptors

    sds, graph = _resnet20_pair()
    g = torch.Generator().manual_seed(5)
    matches = {s.name: greedy_zip(torch.corrcoef(torch.randn(2 * s.size, 16, generator=g)), (s.size, s.size))
               for s in graph.spaces}
    for s in graph.spaces:
        others = {q: m for q, m in matches.items() if q != s.name}
        ours = weight_similarity(descriptors(sds, graph, s.name, {q: m.parts() for q, m in others.items()}))
        ref = torch.corrcoef(_official_weight_vectors(sds, graph, s.name, others)).float()
        assert torch.allclose(ours, ref, atol=1e-5), s.name
