"""Task statistics: Grams, K-FAC gradient factors and diagonal Fisher against hand computations."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mudsc.errors import CheckpointError, ConfigError, DataError
from mudsc.models.heads import Classifier, OwnHead
from mudsc.sameinit.taskstats import compute_stats, conv_patches, label_columns, load_stats, save_stats

D = torch.float64


def _linear_model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), OwnHead(4, classes=(2, 5, 7)))


def _data(n: int, g: torch.Generator, *, shape=(3,), classes=(2, 5, 7)):
    x = torch.randn(n, *shape, generator=g)
    y = torch.tensor(classes)[torch.randint(len(classes), (n,), generator=g)]
    return x, y


def _hand_linear_stats(model: Classifier, x: torch.Tensor, cols: torch.Tensor):
    """Per example: z = tanh(W1 x + b1), logits = W2 z + b2, g2 = p - onehot, g1 = W2^T g2 * tanh'."""
    w1, b1 = model.body[0].weight.double(), model.body[0].bias.double()
    w2, b2 = model.head.fc.weight.double(), model.head.fc.bias.double()
    x = x.double()
    ones = torch.ones(len(x), 1, dtype=D)
    z = torch.tanh(x @ w1.T + b1)
    g2 = (z @ w2.T + b2).softmax(-1) - F.one_hot(cols, 3).double()
    g1 = (g2 @ w2) * (1 - z ** 2)
    x1, x2 = torch.cat([x, ones], 1), torch.cat([z, ones], 1)
    n = len(x)
    return {
        "gram": {"body.0.weight": x1.T @ x1 / n, "head.fc.weight": x2.T @ x2 / n},
        "grad": {"body.0.weight": g1.T @ g1 / n, "head.fc.weight": g2.T @ g2 / n},
        "fisher": {"body.0.weight": (g1[:, :, None] * x[:, None, :]).pow(2).mean(0),
                   "body.0.bias": g1.pow(2).mean(0),
                   "head.fc.weight": (g2[:, :, None] * z[:, None, :]).pow(2).mean(0),
                   "head.fc.bias": g2.pow(2).mean(0)},
    }


def _assert_matches(stats, hand):
    for part in ("gram", "grad", "fisher"):
        got = getattr(stats, part)
        assert set(got) == set(hand[part])
        for k, v in hand[part].items():
            torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-7, msg=f"{part}[{k}]")


@pytest.mark.parametrize("per_example", ["vmap", "loop"])
def test_linear_stats_match_hand_computation_empirical(per_example):
    g = torch.Generator().manual_seed(0)
    model = _linear_model()
    x, y = _data(10, g)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    stats = compute_stats(model, batches, examples=10, fisher="empirical", per_example=per_example, device="cpu")
    assert stats.count == 10 and stats.fisher_kind == "empirical"
    assert stats.bias == {"body.0.weight": "body.0.bias", "head.fc.weight": "head.fc.bias"}
    _assert_matches(stats, _hand_linear_stats(model, x, label_columns(y, (2, 5, 7))))


def test_only_the_asked_parts_are_computed_and_they_equal_the_full_pass():
    g = torch.Generator().manual_seed(1)
    model = _linear_model()
    x, y = _data(12, g)
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    full = compute_stats(model, batches, examples=12, fisher="empirical", device="cpu")
    for parts in (("gram",), ("gram", "grad"), ("fisher",), ("grad",)):
        got = compute_stats(model, batches, examples=12, fisher="empirical", device="cpu", parts=parts)
        for part in ("gram", "grad", "fisher"):
            if part in parts:
                assert set(getattr(got, part)) == set(getattr(full, part))
                for k, v in getattr(full, part).items():
                    torch.testing.assert_close(getattr(got, part)[k], v, msg=f"{parts}: {part}[{k}]")
            else:
                assert getattr(got, part) == {}, (parts, part)
    with pytest.raises(ConfigError, match="statistics parts"):
        compute_stats(model, batches, parts=("hessian",))
    with pytest.raises(ConfigError, match="statistics parts"):
        compute_stats(model, batches, parts=())


def test_sampled_fisher_uses_labels_drawn_from_the_prediction():
    g = torch.Generator().manual_seed(1)
    model = _linear_model(1)
    x, y = _data(12, g)
    stats = compute_stats(model, [(x, y)], examples=12, fisher="sampled", generator=torch.Generator().manual_seed(7),
                          device="cpu")
    with torch.no_grad():
        probs = model(x).double().softmax(-1)
    drawn = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(7))[:, 0]
    _assert_matches(stats, _hand_linear_stats(model, x, drawn))


def test_examples_cap_truncates_the_last_batch():
    g = torch.Generator().manual_seed(2)
    model = _linear_model()
    x, y = _data(10, g)
    stats = compute_stats(model, [(x[:6], y[:6]), (x[6:], y[6:])], examples=7, fisher="empirical", device="cpu")
    assert stats.count == 7
    _assert_matches(stats, _hand_linear_stats(model, x[:7], label_columns(y[:7], (2, 5, 7))))


def _hand_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Explicit loop over samples and output positions, zero padding."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    b, c, h, w = x.shape
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for n in range(b):
        for i in range(oh):
            for j in range(ow):
                patch = torch.zeros(c, kh, kw, dtype=x.dtype)
                for ki in range(kh):
                    for kj in range(kw):
                        r, s = i * sh - ph + ki * dh, j * sw - pw + kj * dw
                        if 0 <= r < h and 0 <= s < w:
                            patch[:, ki, kj] = x[n, :, r, s]
                rows.append(patch.flatten())
    return torch.stack(rows)


def test_conv_patches_match_a_hand_loop():
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2))
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=D)
    patches = conv_patches(conv, x)
    torch.testing.assert_close(patches, _hand_patches(conv, x))
    # rows of patches times the reshaped kernel reproduce the convolution
    out = conv.double()(x)
    torch.testing.assert_close(patches @ conv.weight.reshape(3, -1).T + conv.bias,
                               out.permute(0, 2, 3, 1).reshape(-1, 3))


def test_conv_stats_match_hand_loop():
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    body = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = Classifier(body, OwnHead(3, classes=(0, 1)))
    x, y = _data(3, g, shape=(2, 5, 5), classes=(0, 1))
    stats = compute_stats(model, [(x, y)], examples=3, fisher="empirical", device="cpu")
    patches = _hand_patches(conv, x.double())
    rows = torch.cat([patches, torch.ones(len(patches), 1, dtype=D)], 1)
    torch.testing.assert_close(stats.gram["body.0.weight"], rows.T @ rows / len(rows))
    # per-position output gradients of the per-example losses
    out = conv(x)
    out.retain_grad()
    F.cross_entropy(model.head(body[1:](out)), y, reduction="sum").backward()
    gr = out.grad.double().permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(stats.grad["body.0.weight"], gr.T @ gr / len(gr))


def test_inplace_activation_does_not_change_gradient_factor():
    g = torch.Generator().manual_seed(5)
    x, y = _data(6, g, shape=(1, 4, 4), classes=(0, 1, 2))
    factors = []
    for inplace in (False, True):
        torch.manual_seed(5)
        body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(64, 4))
        model = Classifier(body, OwnHead(4, classes=(0, 1, 2)))
        factors.append(compute_stats(model, [(x, y)], examples=6, fisher="empirical", device="cpu"))
    for k in factors[0].grad:
        torch.testing.assert_close(factors[1].grad[k], factors[0].grad[k])


def test_vmap_and_loop_fisher_agree_with_batchnorm():
    g = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    body = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4))
    model = Classifier(body, OwnHead(4, classes=(0, 1)))
    body[1].running_mean.uniform_(-1, 1, generator=g)
    x, y = _data(8, g, shape=(1, 4, 4), classes=(0, 1))
    a = compute_stats(model, [(x, y)], fisher="empirical", per_example="vmap", chunk_size=3, device="cpu")
    b = compute_stats(model, [(x, y)], fisher="empirical", per_example="loop", device="cpu")
    assert set(a.fisher) == {k for k, _ in model.named_parameters()}
    assert "body.0.weight" in a.gram and "body.0.weight" not in a.bias
    for k in a.fisher:
        torch.testing.assert_close(a.fisher[k], b.fisher[k])
    assert model.training  # the caller's mode is restored


def test_save_load_round_trip(tmp_path):
    g = torch.Generator().manual_seed(7)
    x, y = _data(5, g)
    stats = compute_stats(_linear_model(), [(x, y)], fisher="empirical", device="cpu")
    save_stats(stats, tmp_path / "s.safetensors", {"task": "2,5,7"})
    back = load_stats(tmp_path / "s.safetensors")
    assert back.count == 5 and back.fisher_kind == "empirical" and back.bias == stats.bias
    assert back.metadata == {"task": "2,5,7"}
    for part in ("gram", "grad", "fisher"):
        for k, v in getattr(stats, part).items():
            assert torch.equal(getattr(back, part)[k], v)
    with pytest.raises(ConfigError, match="reserved"):
        save_stats(stats, tmp_path / "t.safetensors", {"count": "3"})


def test_bad_inputs():
    model = _linear_model()
    x = torch.randn(2, 3)
    with pytest.raises(DataError, match=r"labels \[4\] are not among"):
        compute_stats(model, [(x, torch.tensor([2, 4]))], device="cpu")
    with pytest.raises(ConfigError, match="unknown Fisher kind 'true'"):
        compute_stats(model, [], fisher="true")
    with pytest.raises(DataError, match="no examples"):
        compute_stats(model, [], device="cpu")


def test_load_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="not a mudsc statistics file"):
        load_stats(tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_stats(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_stats(tmp_path / "junk.safetensors")
