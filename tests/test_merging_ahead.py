"""Merges made ahead of the alpha slider: which configs, and only where a merge is cheap."""
from types import SimpleNamespace

from mudsc.diffinit.config import make_config
from mudsc.studio.merging import AHEAD_MAX_S, alpha_neighbours, worth_ahead


def test_alpha_neighbours_nearest_first_inside_the_range_rounded_like_the_slider():
    near = alpha_neighbours(make_config(method="mudsc-zip", alpha=0.1), step=0.05, radius=3)
    assert [c.alpha for c in near] == [0.05, 0.15, 0.0, 0.2, 0.25]  # -0.05 is outside [0, 1]
    assert all(c.model_copy(update={"alpha": 0.1}) == make_config(method="mudsc-zip", alpha=0.1) for c in near)
    assert [c.alpha for c in alpha_neighbours(make_config(alpha=0.7), step=0.05, radius=1)] == [0.65, 0.75]


def test_only_cheap_merges_are_made_ahead():
    assert worth_ahead(SimpleNamespace(timings={"match": 0.2, "bn_reset": 0.1}))
    assert not worth_ahead(SimpleNamespace(timings={"match": AHEAD_MAX_S, "bn_reset": 0.1}))
