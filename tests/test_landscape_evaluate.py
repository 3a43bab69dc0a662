"""Multi-task metrics against hand computation (single and multi-head), and the evaluation subsets."""
import math

import pytest
import torch
from torch.func import vmap

from landscape.evaluate import EvalSet, make_eval_set
from mudsc.data import load_dataset
from mudsc.errors import ConfigError, DataError
from mudsc.evaluate import TaskLayout, metric_means, metric_sums


def _ce(row, cols, target):
    z = [row[c] for c in cols]
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return lse - row[target]


def test_single_head_metrics_match_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, generator=g)  # columns are classes 0..6; class 6 belongs to no task
    labels = torch.tensor([0, 1, 2, 3, 4, 2])
    tasks = [(0, 1), (2, 3, 4)]
    out = metric_means(logits, labels, TaskLayout.from_outputs(tasks, tuple(range(7))))
    L = logits.tolist()
    for k, t in enumerate(tasks):
        rows = [i for i, y in enumerate(labels.tolist()) if y in t]
        loss = sum(_ce(L[i], list(t), labels[i].item()) for i in rows) / len(rows)
        acc = sum(max(t, key=lambda c: L[i][c]) == labels[i].item() for i in rows) / len(rows)
        assert out["task_loss"][k].item() == pytest.approx(loss, rel=1e-5)
        assert out["task_acc"][k].item() == pytest.approx(acc)
    union = [0, 1, 2, 3, 4]
    jl = sum(_ce(L[i], union, y) for i, y in enumerate(labels.tolist())) / 6
    ja = sum(max(union, key=lambda c: L[i][c]) == y for i, y in enumerate(labels.tolist())) / 6
    assert out["joint_loss"].item() == pytest.approx(jl, rel=1e-5)
    assert out["joint_acc"].item() == pytest.approx(ja)


def test_multi_head_metrics_match_hand_computation():
    g = torch.Generator().manual_seed(1)
    heads = ((0, 1, 2), (3, 4))
    logits = [torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)]
    labels = torch.tensor([0, 2, 3, 4, 1])
    tasks = [(0, 1, 2), (3, 4)]
    out = metric_means(logits, labels, TaskLayout.from_outputs(tasks, heads))
    probs = [torch.softmax(h, -1).tolist() for h in logits]
    for k, t in enumerate(tasks):
        rows = [i for i, y in enumerate(labels.tolist()) if y in t]
        loss = sum(-math.log(probs[k][i][t.index(labels[i].item())]) for i in rows) / len(rows)
        acc = sum(probs[k][i].index(max(probs[k][i])) == t.index(labels[i].item()) for i in rows) / len(rows)
        assert out["task_loss"][k].item() == pytest.approx(loss, rel=1e-5)
        assert out["task_acc"][k].item() == pytest.approx(acc)
    jl, ja = 0.0, 0
    for i, y in enumerate(labels.tolist()):
        cat = [(p, c) for h, cls in enumerate(heads) for p, c in zip(probs[h][i], cls)]
        pred = max(cat)[1]
        ja += pred == y
        jl += -math.log(sum(p for p, c in cat if c == y) / len(heads))
    assert out["joint_loss"].item() == pytest.approx(jl / 5, rel=1e-5)
    assert out["joint_acc"].item() == pytest.approx(ja / 5)


def test_metric_sums_vmap_matches_per_item():
    g = torch.Generator().manual_seed(2)
    layout = TaskLayout.from_outputs([(0, 1), (2, 3)], (0, 1, 2, 3))
    logits = torch.randn(4, 8, 4, generator=g)
    labels = torch.randint(0, 4, (8,), generator=g)
    batched = vmap(lambda z: metric_sums(z, labels, layout))(logits)
    for i in range(4):
        for a, b in zip(batched, metric_sums(logits[i], labels, layout)):
            assert torch.allclose(a[i], b)


def test_layout_and_labels_are_checked():
    with pytest.raises(ConfigError, match="not scored"):
        TaskLayout.from_outputs([(0, 1), (5,)], (0, 1, 2))
    with pytest.raises(ConfigError, match="overlap"):
        TaskLayout.from_outputs([(0, 1), (1, 2)], (0, 1, 2))
    with pytest.raises(DataError):
        EvalSet.from_tensors(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 7]), [(0,), (1,)])


def test_eval_set_is_stratified_and_seeded():
    ds = load_dataset("digits")
    tasks = [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    es = make_eval_set(ds, tasks, per_task=50, calib_size=96, batch_size=32, calib_batch_size=32,
                       generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(es.y, minlength=10)
    assert counts.tolist() == [10] * 10
    assert len(es.calib_batches()) == 3 and all(len(b) == 32 for b in es.calib_batches())
    assert sum(len(y) for _, y in es.batches()) == 100
    again = make_eval_set(ds, tasks, per_task=50, calib_size=96, batch_size=32, calib_batch_size=32,
                          generator=torch.Generator().manual_seed(0))
    other = make_eval_set(ds, tasks, per_task=50, calib_size=96, batch_size=32, calib_batch_size=32,
                          generator=torch.Generator().manual_seed(1))
    assert again.fingerprint == es.fingerprint and other.fingerprint != es.fingerprint
