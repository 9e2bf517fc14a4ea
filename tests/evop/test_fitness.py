import numpy as np
import pytest

from optishear_moo.evop.blocks import remove_blocks_
from optishear_moo.evop.fitness import BlockRemovalEvaluator, greedy_removal_order
from tests.conftest import assert_same_weights
from tests.evop.helpers import calibration_ppl, deep_model


def test_evaluator_scores_equal_those_of_the_really_removed_model(calibration):
    model = deep_model()
    evaluator = BlockRemovalEvaluator(model, calibration, batch_size=4)
    assert evaluator.evaluate([])["kl"] == pytest.approx(0.0, abs=1e-6)
    assert evaluator.dense_ppl == pytest.approx(calibration_ppl(model, calibration), rel=1e-4)
    # candidates scored together share the prefixes they agree on; duplicates run once
    candidates = [[1, 3], [1, 3, 5], [1, 4], [1, 3, 4], [0, 5], [1, 3, 5]]
    before = evaluator.n_block_forwards
    scores = evaluator.evaluate_many(candidates)
    # distinct prefixes ending in a kept block, block by block: 1 + 1 + 2 + 2 + 2 + 3 (21 one at a time)
    assert evaluator.n_block_forwards - before == 11 < sum(6 - len(c) for c in candidates)
    assert scores[1] == scores[5]
    assert evaluator.evaluate([1, 4])["kl"] == pytest.approx(scores[2]["kl"], rel=1e-6)
    for removed, score in zip(candidates[:5], scores):
        pruned = deep_model()
        remove_blocks_(pruned, removed)
        assert score["ppl"] == pytest.approx(calibration_ppl(pruned, calibration), rel=1e-4)
        assert score["kl"] > 0
    assert_same_weights(model, deep_model())


def test_greedy_order_starts_with_the_best_single_removal(calibration):
    evaluator = BlockRemovalEvaluator(deep_model(), calibration)
    order = greedy_removal_order(evaluator, 3, objective="ppl")
    singles = [evaluator.evaluate([i])["ppl"] for i in range(6)]
    assert len(set(order)) == 3 and order[0] == int(np.argmin(singles))
