"""Metrics against matrices computed by hand."""

import pytest

from migu import metrics

# 3 tasks; row 0 before training, row i after task i
R = [
    [10.0, 20.0, 30.0],
    [80.0, 25.0, 35.0],
    [70.0, 90.0, 40.0],
    [60.0, 85.0, 95.0],
]


def test_average_accuracy():
    assert metrics.average_accuracy(R) == pytest.approx((60 + 85 + 95) / 3)


def test_backward_transfer():
    # task 1: 60 - 80 = -20; task 2: 85 - 90 = -5
    assert metrics.backward_transfer(R) == pytest.approx(-12.5)


def test_forward_transfer():
    # task 2 before training it (row 1): 25 vs 20 untrained; task 3 (row 2): 40 vs 30
    assert metrics.forward_transfer(R) == pytest.approx(7.5)


def test_forgetting():
    # task 1: max(80, 70) - 60 = 20; task 2: max(90) - 85 = 5 (row 1, before task 2 was learned, is not a candidate)
    assert metrics.forgetting_per_task(R) == [20.0, 5.0]
    assert metrics.forgetting(R) == pytest.approx(12.5)


def test_forgetting_ignores_rows_before_the_task_was_learned():
    # task 2 scores 50 zero-shot after task 1 but only 40 once trained: the drop from 50 is no forgetting
    m = [[10.0, 20.0, 30.0], [80.0, 50.0, 35.0], [70.0, 40.0, 40.0], [60.0, 40.0, 95.0]]
    assert metrics.forgetting_per_task(m) == [20.0, 0.0]
    seen = [[None, None, None], [80.0, None, None], [70.0, 40.0, None], [60.0, 40.0, 95.0]]
    assert metrics.forgetting_per_task(seen) == metrics.forgetting_per_task(m)


def test_learning_accuracy_and_summary():
    assert metrics.learning_accuracy(R) == pytest.approx((80 + 90 + 95) / 3)
    s = metrics.summary(R)
    assert s["final_accuracy"] == [60.0, 85.0, 95.0]


def test_single_task():
    m = [[50.0], [90.0]]
    assert metrics.average_accuracy(m) == 90.0
    assert metrics.backward_transfer(m) == 0.0
    assert metrics.forgetting(m) == 0.0


def test_mean_std():
    assert metrics.mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert metrics.mean_std([4.0]) == (4.0, 0.0)
    with pytest.raises(ValueError):
        metrics.mean_std([])


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [[1.0], [2.0], [3.0]], [[1.0, 2.0], [1.0], [1.0, 2.0]]])
def test_bad_shapes(bad):
    with pytest.raises(ValueError, match="T \\+ 1 rows"):
        metrics.average_accuracy(bad)


def test_entries_not_evaluated():
    # evaluate_tasks=seen: row 0 and the entries above the diagonal are missing
    R = [[None, None, None], [80.0, None, None], [70.0, 90.0, None], [60.0, 85.0, 95.0]]
    full = [[10.0, 20.0, 30.0], [80.0, 25.0, 35.0], [70.0, 90.0, 40.0], [60.0, 85.0, 95.0]]
    for key in ("aa", "bwt", "learning_accuracy", "final_accuracy"):
        assert metrics.summary(R)[key] == metrics.summary(full)[key]
    assert metrics.forward_transfer(R) is None
    assert metrics.forgetting_per_task(R) == [20.0, 5.0]
    with pytest.raises(ValueError, match="AA needs the accuracy on task 2 after row 2, which was not evaluated"):
        metrics.average_accuracy([[None, None], [80.0, None], [70.0, None]])
    with pytest.raises(ValueError, match="BWT needs the accuracy on task 1 after row 1"):
        metrics.backward_transfer([[None, None], [None, None], [70.0, 60.0]])
