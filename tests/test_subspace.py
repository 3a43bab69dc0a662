"""Linear-system merging: closed forms, the MaTS identities, and conjugate gradient."""
import pytest
import torch

from mudsc.errors import ConfigError, ShapeMismatchError
from mudsc.sameinit.subspace import (
    conjugate_gradient,
    fisher_system,
    identity_system,
    initial_point,
    kfac_system,
    regmean_system,
    scale_offdiagonal,
    solve_cg,
    solve_fisher,
    solve_regmean,
)

D = torch.float64


def _psd(d: int, g: torch.Generator, *, rank: int | None = None) -> torch.Tensor:
    x = torch.randn(rank or 2 * d, d, generator=g, dtype=D)
    return x.T @ x / x.shape[0]


def _weights(n: int, o: int, d: int, g: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(o, d, generator=g, dtype=D) for _ in range(n)]


def _dense_kfac(ws, grams, grads):
    """The K-FAC system as a dense [o*d, o*d] matrix on row-major vec(W)."""
    m = sum(torch.kron(gi, ai.T.contiguous()) for ai, gi in zip(grams, grads))
    b = sum(gi @ w @ ai for w, ai, gi in zip(ws, grams, grads)).flatten()
    return m, b


def test_identity_objective_gives_mean():
    g = torch.Generator().manual_seed(0)
    ws = _weights(3, 4, 5, g)
    sol = solve_cg(identity_system(ws), torch.zeros(4, 5, dtype=D), iterations=5, tol=0)
    torch.testing.assert_close(sol.x, torch.stack(ws).mean(0))
    assert sol.residual < 1e-12


def test_cg_matches_dense_kfac_solve():
    g = torch.Generator().manual_seed(1)
    o, d = 4, 6
    ws = _weights(3, o, d, g)
    grams = [_psd(d, g) for _ in ws]
    grads = [_psd(o, g) for _ in ws]
    m, b = _dense_kfac(ws, grams, grads)
    dense = torch.linalg.solve(m, b).reshape(o, d)
    sol = solve_cg(kfac_system(ws, grams, grads), torch.zeros(o, d, dtype=D), iterations=500, tol=1e-14)
    assert torch.linalg.norm(sol.x - dense) / torch.linalg.norm(dense) <= 1e-5
    assert sol.residual <= 1e-10
    assert 0 < sol.iterations <= 500


def test_kfac_with_scaled_identity_gradients_equals_regmean():
    g = torch.Generator().manual_seed(2)
    o, d, c = 3, 5, 0.7
    ws = _weights(2, o, d, g)
    grams = [_psd(d, g) for _ in ws]
    eye = [c * torch.eye(o, dtype=D) for _ in ws]
    x0 = torch.zeros(o, d, dtype=D)
    kfac = solve_cg(kfac_system(ws, grams, eye), x0, iterations=200, tol=1e-13)
    closed = solve_regmean(ws, grams, x0)
    torch.testing.assert_close(kfac.x, closed.x, rtol=1e-8, atol=1e-8)


def test_regmean_closed_form_solves_normal_equations():
    g = torch.Generator().manual_seed(3)
    ws = _weights(3, 4, 5, g)
    grams = [_psd(5, g) for _ in ws]
    sol = solve_regmean(ws, grams, torch.zeros(4, 5, dtype=D), alpha=0.5)
    scaled = [scale_offdiagonal(a, 0.5) for a in grams]
    torch.testing.assert_close(sol.x @ sum(scaled), sum(w @ a for w, a in zip(ws, scaled)))
    assert sol.residual < 1e-10


def test_equal_factors_give_the_average():
    g = torch.Generator().manual_seed(4)
    ws = _weights(3, 3, 4, g)
    a, gr = _psd(4, g), _psd(3, g)
    sol = solve_cg(kfac_system(ws, [a] * 3, [gr] * 3), torch.zeros(3, 4, dtype=D), iterations=200, tol=1e-13)
    torch.testing.assert_close(sol.x, torch.stack(ws).mean(0), rtol=1e-7, atol=1e-7)


def test_cg_keeps_null_space_components_of_the_initialisation():
    g = torch.Generator().manual_seed(5)
    o, d = 3, 6
    ws = _weights(2, o, d, g)
    # rank-2 Grams sharing a 2-d input subspace: 4 input directions are never excited
    basis = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=D))[0]
    grams = [basis @ _psd(2, g) @ basis.T for _ in ws]
    grads = [_psd(o, g) for _ in ws]
    x0 = torch.randn(o, d, generator=g, dtype=D)
    null = torch.eye(d, dtype=D) - basis @ basis.T
    sol = solve_cg(kfac_system(ws, grams, grads), x0, iterations=50, tol=1e-14)
    torch.testing.assert_close(sol.x @ null, x0 @ null, rtol=0, atol=1e-10)
    assert sol.residual < 1e-8
    # it moved in the range, and the closed form agrees on both parts
    assert torch.linalg.norm((sol.x - x0) @ basis) > 1e-3
    closed = solve_regmean(ws, grams, x0)
    torch.testing.assert_close(closed.x @ null, x0 @ null, rtol=0, atol=1e-10)


def test_cg_stops_at_the_iteration_cap_and_starts_at_x0():
    g = torch.Generator().manual_seed(6)
    ws = _weights(2, 5, 8, g)
    system = kfac_system(ws, [_psd(8, g) for _ in ws], [_psd(5, g) for _ in ws])
    x0 = torch.randn(5, 8, generator=g, dtype=D)
    zero = solve_cg(system, x0, iterations=0)
    torch.testing.assert_close(zero.x, x0)
    few, many = (solve_cg(system, x0, iterations=k, tol=0) for k in (2, 40))
    assert few.iterations == 2 and few.residual > many.residual


def test_cg_flags_an_indefinite_operator_but_not_a_singular_one():
    g = torch.Generator().manual_seed(8)
    ws = _weights(2, 4, 6, g)
    grads = [_psd(4, g) for _ in ws]
    x0 = torch.zeros(4, 6, dtype=D)
    # Grams shifted below zero, as a corrupt statistics file could hold: negative curvature is met
    shifted = [a - 2 * torch.linalg.eigvalsh(a)[-1] * torch.eye(6, dtype=D) for a in (_psd(6, g) for _ in ws)]
    bad = solve_cg(kfac_system(ws, shifted, grads), x0, iterations=30, tol=1e-14)
    assert bad.indefinite and bad.diverged
    # a singular but semi-definite system ends on rounding-level curvature: not flagged
    basis = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=D))[0]
    low = [basis @ _psd(2, g) @ basis.T for _ in ws]
    ok = solve_cg(kfac_system(ws, low, grads), x0, iterations=60, tol=0)
    assert not ok.indefinite and not ok.diverged


def test_damping_pulls_towards_the_initialisation():
    g = torch.Generator().manual_seed(7)
    ws = _weights(2, 3, 4, g)
    grams = [_psd(4, g) for _ in ws]
    x0 = torch.zeros(3, 4, dtype=D)
    free = solve_regmean(ws, grams, x0)
    strong = solve_regmean(ws, grams, x0, damping=1e6)
    assert torch.linalg.norm(strong.x) < 1e-4 * torch.linalg.norm(free.x)
    cg = solve_cg(regmean_system(ws, grams), x0, iterations=100, tol=1e-14, damping=0.5)
    torch.testing.assert_close(cg.x, solve_regmean(ws, grams, x0, damping=0.5).x)


def test_fisher_closed_form_and_cg_agree():
    g = torch.Generator().manual_seed(8)
    ws = _weights(3, 4, 4, g)
    fs = [torch.rand(4, 4, generator=g, dtype=D) for _ in ws]
    fs[0][0, 0] = 0.0
    closed = solve_fisher(ws, fs, torch.zeros(4, 4, dtype=D))
    torch.testing.assert_close(closed.x, sum(f * w for f, w in zip(fs, ws)) / sum(fs))
    cg = solve_cg(fisher_system(ws, fs), torch.zeros(4, 4, dtype=D), iterations=200, tol=1e-14)
    torch.testing.assert_close(cg.x, closed.x)


def test_fisher_floor_averages_where_no_task_cares():
    ws = [torch.full((2,), 1.0, dtype=D), torch.full((2,), 3.0, dtype=D)]
    fs = [torch.zeros(2, dtype=D), torch.zeros(2, dtype=D)]
    torch.testing.assert_close(solve_fisher(ws, fs, torch.zeros(2, dtype=D)).x, torch.full((2,), 2.0, dtype=D))


def test_offdiagonal_scaling():
    m = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=D)
    torch.testing.assert_close(scale_offdiagonal(m, 0.25), torch.tensor([[2.0, 0.25], [0.25, 3.0]], dtype=D))
    torch.testing.assert_close(scale_offdiagonal(m, 0.0), torch.diag(torch.diagonal(m)))
    with pytest.raises(ConfigError, match="alpha"):
        scale_offdiagonal(m, 1.5)


def test_initial_points():
    base = torch.zeros(3, dtype=D)
    ws = [torch.ones(3, dtype=D), 3 * torch.ones(3, dtype=D)]
    torch.testing.assert_close(initial_point("average", base, ws), 2 * torch.ones(3, dtype=D))
    torch.testing.assert_close(initial_point("task-arithmetic", base, ws, lam=0.5), 2 * torch.ones(3, dtype=D))
    torch.testing.assert_close(initial_point("task-arithmetic", base + 1, ws, lam=1.0), 3 * torch.ones(3, dtype=D))
    assert not initial_point("zeros", base + 1, ws).any()
    with pytest.raises(ConfigError, match="unknown initialisation 'mean'"):
        initial_point("mean", base, ws)


def test_shape_checks():
    g = torch.Generator().manual_seed(9)
    ws = _weights(2, 3, 4, g)
    with pytest.raises(ShapeMismatchError, match=r"Gram has shape \(5, 5\)"):
        regmean_system(ws, [_psd(5, g), _psd(5, g)])
    with pytest.raises(ShapeMismatchError, match="weight 1"):
        identity_system([ws[0], ws[1].T])
    with pytest.raises(ShapeMismatchError, match="x0"):
        conjugate_gradient(lambda v: v, ws[0], ws[0].T)
