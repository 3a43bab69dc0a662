"""Incremental S_W: per-group Gram parts give exactly the S_W a fresh cache gives, the S_W of the whole
descriptor to float32 rounding, and only the groups reading a changed neighbour are computed again."""
import pytest
import torch

from mudsc.diffinit.descriptor_cache import DescriptorCache
from mudsc.diffinit.similarity import descriptors, weight_similarity
from mudsc.diffinit.solvers import greedy_zip
from mudsc.models import create_model
from mudsc.unitgraph import trace


def _random_matches(graph, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in graph.spaces:
        z = torch.randn(2 * s.size, 8, generator=g)
        out[s.name] = greedy_zip(torch.corrcoef(z), (s.size, s.size), a=0.5, b=1.0)
    return out


@pytest.mark.parametrize("arch,kw", [("resnet20", {"width": 1}),
                                     ("timm:vit_tiny_patch16_224", {"patch_size": 7, "depth": 2, "num_heads": 3,
                                                                    "embed_dim": 24})])
def test_incremental_update_equals_full_recompute(arch, kw):
    sds = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model(arch, classes=(0, 1), num_classes=10, in_chans=1, img_size=28 if "vit" in arch else 8,
                             **kw)
        sds.append(model.state_dict())
    graph = trace(model)
    first, second = _random_matches(graph, 0), _random_matches(graph, 1)
    for metric in ("pearson", "cosine", "inner"):
        _check(sds, graph, first, second, metric)


def _check(sds, graph, first, second, metric):
    names = [s.name for s in graph.spaces]
    grams = DescriptorCache(sds, graph, names, metric=metric, device="cpu")
    current = dict(first)
    for s in names:
        grams(s, current)
    computed = grams.pooled
    changed = names[len(names) // 2]
    current[changed] = second[changed]  # one neighbour's match changes
    fresh = DescriptorCache(sds, graph, names, metric=metric, device="cpu")
    for s in names:
        full = descriptors(sds, graph, s, {q: m.parts() for q, m in current.items() if q != s})
        groups = [grams.columns(s, g, current) for g in range(len(grams.groups[s]))]
        order = [k for _, positions in grams.groups[s] for k in positions]
        assert sorted(order) == list(range(len(order)))  # the groups partition the descriptor's blocks
        assert sum(z.shape[1] for z in groups) == full.shape[1]
        got = grams(s, current)
        assert torch.equal(got, fresh(s, current)), (s, metric)  # independent of what was cached before
        assert got.dtype == weight_similarity(full, metric=metric).dtype
        z = full.double()
        if metric == "inner":
            assert torch.allclose(got, z @ z.T, rtol=1e-12, atol=0), (s, metric)
            continue
        if metric == "pearson":
            z = z - z.mean(1, keepdim=True)
        z = z / z.norm(dim=1, keepdim=True)
        # float32 products: within 1e-6 of the float64 similarity (the whole-descriptor route: 3e-6 here)
        assert (got.double() - z @ z.T).abs().max() < 1e-6, (s, metric)
    redone = grams.pooled - computed
    readers = sum(changed in deps for s in names for deps, _ in grams.groups[s])
    assert redone == readers  # exactly the groups that read the changed space
    assert 0 < redone < computed
