"""Row selection against torch.quantile, on random data with and without ties."""

import pytest
import torch

from migu.core import cut_index, magnitude_keep, random_keep


@pytest.mark.parametrize("rows", [1, 2, 7, 10, 64, 1000])
@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.4, 0.5, 0.7, 0.99])
def test_magnitude_keep_is_quantile_rule(rows, threshold):
    g = torch.Generator().manual_seed(rows)
    stats = torch.rand(3, rows, generator=g, dtype=torch.float64).float()
    keep = magnitude_keep(stats, threshold)
    for layer in range(3):
        q = torch.quantile(stats[layer].double(), threshold)
        assert torch.equal(keep[layer], stats[layer].double() >= q)
        assert int(keep[layer].sum()) == rows - cut_index(rows, threshold)


def test_ties_at_the_cut_are_all_kept():
    stats = torch.tensor([[1.0, 2.0, 2.0, 2.0, 3.0]])
    assert magnitude_keep(stats, 0.5).tolist() == [[False, True, True, True, True]]


def test_nan_rows_rank_last_on_both_paths():
    from migu.core.selection import rankable

    # NaN (an overflowed forward) is never kept over a number; without the rule, sort-based
    # ranking (the fast path's topk) would take NaN as the largest value and keep it
    stats = torch.tensor([[float("nan"), 1.0, 5.0, 2.0, 4.0, 3.0, 0.5, 6.0, 7.0, 8.0, 9.0]])
    keep = magnitude_keep(stats, 0.7)
    assert not keep[0, 0] and keep.sum() == 11 - cut_index(11, 0.7)
    fast = torch.zeros(11, dtype=torch.bool)
    fast[rankable(stats[0]).topk(int(keep.sum())).indices] = True
    assert torch.equal(fast, keep[0])
    # more NaN rows than the cut: every number is kept, no NaN; the fast path's top-k, masked
    # again by this rule before the step, ends with the same rows
    stats = torch.tensor([[float("nan")] * 8 + [1.0, 2.0, 3.0]])
    keep = magnitude_keep(stats, 0.7)
    assert keep[0].tolist() == [False] * 8 + [True] * 3
    fast = torch.zeros(11, dtype=torch.bool)
    fast[rankable(stats[0]).topk(11 - cut_index(11, 0.7)).indices] = True
    assert torch.equal(fast & keep[0], keep[0])


def test_cut_index_edges():
    assert cut_index(10, 0.0) == 0
    assert cut_index(11, 0.7) == 7  # 0.7 * 10 is 7.000000000000001 in binary
    assert cut_index(10, 0.7) == 7  # ceil(6.3)
    assert cut_index(1, 0.9) == 0


def test_random_keep_same_count_and_reproducible():
    stats = torch.rand(4, 50)
    keep = magnitude_keep(stats, 0.7)
    r1 = random_keep(stats, 0.7, torch.Generator().manual_seed(1))
    r2 = random_keep(stats, 0.7, torch.Generator().manual_seed(1))
    assert torch.equal(r1.sum(-1), keep.sum(-1))
    assert torch.equal(r1, r2)
    assert not torch.equal(r1, keep)
