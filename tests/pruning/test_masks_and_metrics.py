import pytest
import torch

from optishear_moo.activations import InputStatistics
from optishear_moo.pruning import (
    build_mask,
    layer_mask,
    magnitude_score,
    nm_mask,
    parse_nm,
    ria_score,
    row_mask,
    wanda_score,
)


def _statistics(x: torch.Tensor) -> InputStatistics:
    stats = InputStatistics(x.shape[1], x.device)
    stats.update(x)
    return stats


def test_metrics_follow_their_formulas():
    torch.manual_seed(0)
    w, x = torch.randn(6, 8), torch.randn(50, 8) * torch.arange(1, 9)
    stats = _statistics(x)
    torch.testing.assert_close(magnitude_score(w), w.abs())
    torch.testing.assert_close(wanda_score(w, stats), w.abs() * x.norm(dim=0), rtol=1e-5, atol=1e-5)
    relative = w.abs() / w.abs().sum(1, keepdim=True) + w.abs() / w.abs().sum(0, keepdim=True)
    torch.testing.assert_close(ria_score(w, stats), relative * x.norm(dim=0).sqrt(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs activation statistics"):
        wanda_score(w, None)


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.7])
def test_row_mask_prunes_exactly_the_lowest_per_row(sparsity):
    torch.manual_seed(1)
    scores = torch.rand(16, 40)
    mask = row_mask(scores, sparsity)
    n_pruned = round(sparsity * 40)
    assert (~mask).sum(dim=1).tolist() == [n_pruned] * 16
    for row in range(16):  # every kept score beats every pruned one
        if 0 < n_pruned < 40:
            assert scores[row][mask[row]].min() > scores[row][~mask[row]].max()


def test_layer_mask_is_global_within_the_layer():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    mask = layer_mask(scores, 0.5)
    assert mask.tolist() == [[False, False, False, False], [True, True, True, True]]


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_mask_pattern_holds_in_every_group(nm):
    n, m = nm
    torch.manual_seed(2)
    scores = torch.rand(12, 32)
    mask = nm_mask(scores, n, m)
    groups = mask.reshape(12, 32 // m, m)
    assert (groups.sum(dim=2) == n).all()
    kept_min = torch.where(groups, scores.reshape(12, -1, m), torch.inf).min(dim=2).values
    pruned_max = torch.where(~groups, scores.reshape(12, -1, m), -torch.inf).max(dim=2).values
    assert (kept_min > pruned_max).all()


def test_mask_input_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        nm_mask(torch.rand(3, 10), 2, 4)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"in \[0, 1\)"):
            row_mask(torch.rand(3, 8), bad)
    with pytest.raises(ValueError, match="look like '2:4'"):
        parse_nm("2-4")
    with pytest.raises(ValueError, match="0 < N < M"):
        parse_nm("4:2")
    with pytest.raises(ValueError, match="scope"):
        build_mask(torch.rand(2, 4), 0.5, scope="column")
    assert parse_nm("2:4") == (2, 4) and parse_nm(None) is None


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_masks_from_ranks_equal_topk_masks(sparsity):
    from optishear_moo.pruning.masks import row_mask_from_ranks, row_ranks

    torch.manual_seed(3)
    scores = torch.rand(9, 50)
    scores[0, :10] = 0.5  # ties are broken consistently and counts stay exact
    ranks = row_ranks(scores)
    assert ranks.dtype == torch.int16
    mask = row_mask_from_ranks(ranks, sparsity)
    assert (~mask).sum(1).tolist() == [round(sparsity * 50)] * 9
    if sparsity not in (0.0,):
        torch.testing.assert_close(mask[1:], row_mask(scores[1:], sparsity))




@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])  # numpy; numpy; topk
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.97])
def test_selection_masks_equal_rank_masks_ties_included(sparsity, dtype):
    from optishear_moo.pruning.masks import row_mask_by_selection, row_mask_from_ranks, row_ranks

    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(64, 40, generator=generator)
    scores[::3] = torch.randint(0, 4, (22, 40), generator=generator).float()  # rows full of ties
    scores = scores.to(dtype)
    expected = row_mask_from_ranks(row_ranks(scores), sparsity)
    assert torch.equal(row_mask_by_selection(scores, sparsity), expected)
    assert (~expected).sum(1).eq(round(sparsity * 40)).all()
