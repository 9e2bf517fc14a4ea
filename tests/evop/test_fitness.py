import numpy as np
import pytest

from optishear_moo.evop.blocks import remove_blocks_
from optishear_moo.evop.fitness import BlockRemovalEvaluator, greedy_removal_order
from tests.evop.helpers import calibration_ppl, deep_model


def test_evaluator_scores_equal_those_of_the_really_removed_model(calibration):
    model = deep_model()
    evaluator = BlockRemovalEvaluator(model, calibration, batch_size=4, cache_size=8)
    assert evaluator.evaluate([])["kl"] == pytest.approx(0.0, abs=1e-6)
    assert evaluator.dense_ppl == pytest.approx(calibration_ppl(model, calibration), rel=1e-4)
    # candidates sharing prefixes: later ones start from cached states
    candidates = [[1, 3], [1, 3, 5], [1, 4], [1, 3, 4], [0, 5], [1, 3, 5]]
    scores = [evaluator.evaluate(c) for c in candidates]
    assert evaluator.n_block_forwards < sum(6 - c[0] - len(c) + 1 for c in candidates)
    assert scores[1] == scores[5]
    uncached = BlockRemovalEvaluator(model, calibration, batch_size=4, cached_logits_limit=0)
    assert uncached.dense_log_probs is None and evaluator.dense_log_probs is not None
    assert uncached.evaluate([1, 4])["kl"] == pytest.approx(scores[2]["kl"], rel=1e-5)
    for removed, score in zip(candidates[:5], scores):
        pruned = deep_model()
        remove_blocks_(pruned, removed)
        assert score["ppl"] == pytest.approx(calibration_ppl(pruned, calibration), rel=1e-4)
        assert score["kl"] > 0


def test_greedy_order_starts_with_the_best_single_removal(calibration):
    evaluator = BlockRemovalEvaluator(deep_model(), calibration)
    order = greedy_removal_order(evaluator, 3, objective="ppl")
    singles = [evaluator.evaluate([i])["ppl"] for i in range(6)]
    assert len(set(order)) == 3 and order[0] == int(np.argmin(singles))
