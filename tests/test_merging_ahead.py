"""Merges made ahead of the alpha slider: which configs, and only where a merge is cheap."""
from types import SimpleNamespace

from mudsc.diffinit.config import make_config
from mudsc.studio.merging import AHEAD_MAX_S, alpha_neighbours, worth_ahead


def test_alpha_neighbours_nearest_first_inside_the_range_rounded_like_the_slider():
    near = alpha_neighbours(make_config(method="mudsc-zip", alpha=0.1), step=0.05, radius=3)
    assert [c.alpha for c in near] == [0.05, 0.15, 0.0, 0.2, 0.25]  # -0.05 is outside [0, 1]
    assert all(c.model_copy(update={"alpha": 0.1}) == make_config(method="mudsc-zip", alpha=0.1) for c in near)
    assert [c.alpha for c in alpha_neighbours(make_config(alpha=0.7), step=0.05, radius=1)] == [0.65, 0.75]
    up = alpha_neighbours(make_config(alpha=0.7), step=0.05, radius=2, toward=1)  # the slider last moved up
    assert [c.alpha for c in up] == [0.75, 0.65, 0.8, 0.6]


def test_only_cheap_merges_are_made_ahead():
    assert worth_ahead(SimpleNamespace(timings={"match": 0.2, "bn_reset": 0.1}))
    assert not worth_ahead(SimpleNamespace(timings={"match": AHEAD_MAX_S, "bn_reset": 0.1}))


def test_a_step_waits_for_the_merge_in_flight_instead_of_making_it_twice(tiny_parents, monkeypatch):
    """The slider asks for a merge the merge-ahead thread is making: the page waits for that one."""
    import threading

    import mudsc.diffinit.session as engine
    from mudsc.studio.merging import await_in_flight

    session = engine.MergeSession.from_paths(tiny_parents, "digits")
    config = make_config(method="mudsc-zip", alpha=0.35)
    started, release, made = threading.Event(), threading.Event(), []
    solve = engine.solve

    def slow_solve(*args, **kw):  # the ahead thread is mid-merge when the step arrives
        made.append(1)
        started.set()
        release.wait(10)
        return solve(*args, **kw)

    monkeypatch.setattr(engine, "solve", slow_solve)
    ahead = threading.Thread(target=session.merge, args=(config,))
    ahead.start()
    assert started.wait(10) and session.in_flight(config) and session.cached(config) is None
    assert await_in_flight(session, config, timeout=0.05) is None                  # not ready: gives up in time
    assert await_in_flight(session, config, timeout=5, stop=lambda: True) is None  # the user moved on
    threading.Timer(0.1, release.set).start()
    result = await_in_flight(session, config, timeout=10)
    ahead.join()
    assert result is not None and result is session.cached(config) and made == [1]
    assert not session.in_flight(config)
