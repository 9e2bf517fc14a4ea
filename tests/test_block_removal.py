import numpy as np
import pytest
import torch
from pymoo.core.problem import Problem
from pymoo.operators.mutation.bitflip import BitflipMutation
from pymoo.optimize import minimize
from transformers import AutoModelForCausalLM

from optishear_moo.block_fitness import BlockRemovalEvaluator, greedy_removal_order
from optishear_moo.models import get_adapter
from optishear_moo.problems.block_removal import (
    BlockCountRepair,
    BlockRemovalProblem,
    BlockRemovalSampling,
    BlockSwapMutation,
    CountPreservingCrossover,
    block_removal_algorithm,
)
from optishear_moo.pruning.blocks import block_influence, last_blocks, remove_blocks_, shortgpt_blocks
from optishear_moo.search import run_search

from .conftest import tiny_config


def deep_model(family="llama", n_layers=6, seed=0):
    config = tiny_config(family)
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[0]] * n_layers
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)


def skipping(model, removed):
    """The dense model with ``removed`` blocks turned into identities by hooks."""
    def identity(_module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    blocks = get_adapter(model).blocks(model)
    return [blocks[i].register_forward_hook(identity, with_kwargs=True) for i in removed]


def calibration_ppl(model, calibration):
    with torch.no_grad():
        out = model(input_ids=calibration, labels=calibration, use_cache=False)
    return float(torch.exp(out.loss))


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "opt"])
def test_removed_model_equals_dense_model_with_blocks_skipped(family, calibration):
    model = deep_model(family, n_layers=5)
    removed = [1, 3]
    handles = skipping(model, removed)
    with torch.no_grad():
        expected = model(input_ids=calibration, use_cache=False).logits
    for handle in handles:
        handle.remove()
    remove_blocks_(model, removed)
    with torch.no_grad():
        actual = model(input_ids=calibration, use_cache=False).logits
    torch.testing.assert_close(actual, expected)
    assert model.config.num_hidden_layers == 3 and model.config.removed_blocks == removed
    indices = [m.layer_idx for m in model.modules() if hasattr(m, "layer_idx")]
    assert indices == sorted(indices) and set(indices) == {0, 1, 2}
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 3
    remove_blocks_(model, [0])  # a second removal records original indices
    assert model.config.removed_blocks == [0, 1, 3]


def test_removed_model_generates_with_kv_cache_saves_and_reloads(calibration, tmp_path):
    model = deep_model()
    remove_blocks_(model, [2, 4])
    prompt = calibration[:1, :8]
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 4 and reloaded.config.removed_blocks == [2, 4]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(calibration).logits, model(calibration).logits)


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


def test_block_influence_finds_a_block_that_does_nothing(calibration):
    model = deep_model()
    block = get_adapter(model).blocks(model)[3]
    block.self_attn.o_proj.weight.zero_()
    block.mlp.down_proj.weight.zero_()  # residual stream passes through unchanged
    influence = block_influence(model, calibration, batch_size=4)
    assert influence[3] == pytest.approx(0.0, abs=1e-6) and (np.delete(influence, 3) > 1e-4).all()
    assert shortgpt_blocks(model, calibration, 1) == [3]
    cached = BlockRemovalEvaluator(model, calibration, batch_size=4).block_influence()
    np.testing.assert_allclose(cached, influence, rtol=1e-6, atol=1e-9)  # no second dense pass needed
    assert last_blocks(6, 2) == [3, 4]


def test_greedy_order_starts_with_the_best_single_removal(calibration):
    evaluator = BlockRemovalEvaluator(deep_model(), calibration)
    order = greedy_removal_order(evaluator, 3, objective="ppl")
    singles = [evaluator.evaluate([i])["ppl"] for i in range(6)]
    assert len(set(order)) == 3 and order[0] == int(np.argmin(singles))


class CountOnly(Problem):
    def __init__(self, n_var, n_remove_range):
        self.n_remove_range = n_remove_range
        super().__init__(n_var=n_var, n_obj=1, xl=0, xu=1, vtype=bool)


@pytest.mark.parametrize("count_range", [(3, 3), (2, 5)])
def test_every_operator_keeps_the_count_in_range(count_range):
    problem, rng = CountOnly(12, count_range), np.random.default_rng(0)
    low, high = count_range
    X = BlockRemovalSampling()._do(problem, 40, random_state=rng)
    assert ((X.sum(1) >= low) & (X.sum(1) <= high)).all() and len({tuple(r) for r in X}) > 10
    children = CountPreservingCrossover()._do(problem, np.stack([X[:20], X[20:]]), random_state=rng)
    assert (children[0].sum(1) == X[:20].sum(1)).all() and (children[1].sum(1) == X[20:].sum(1)).all()
    mutated = BlockSwapMutation(n_swaps=2)._do(problem, X, random_state=rng)
    assert ((mutated.sum(1) >= low) & (mutated.sum(1) <= high)).all() and (mutated != X).any()
    if low == high:
        assert (mutated.sum(1) == low).all()
    flipped = BitflipMutation(prob_var=0.5)._do(problem, X, random_state=rng)
    repaired = BlockCountRepair()._do(problem, flipped, random_state=rng)
    assert ((repaired.sum(1) >= low) & (repaired.sum(1) <= high)).all()


def test_search_finds_the_exhaustive_optimum_and_a_size_front(calibration):
    model = deep_model()
    evaluator = BlockRemovalEvaluator(model, calibration)
    problem = BlockRemovalProblem(model, calibration, 2, evaluator=evaluator)
    result = minimize(problem, block_removal_algorithm(problem, pop_size=8), ("n_gen", 6), seed=0)
    best = min((evaluator.evaluate([i, j])["kl"], [i, j]) for i in range(6) for j in range(i + 1, 6))
    assert problem.decode(result.X) == best[1] and result.F[0] == pytest.approx(best[0])
    again = minimize(problem, block_removal_algorithm(problem, pop_size=8), ("n_gen", 6), seed=0)
    assert np.array_equal(again.X, result.X)

    multi = BlockRemovalProblem(model, calibration, (1, 3), evaluator=evaluator)
    front = minimize(multi, block_removal_algorithm(multi, pop_size=10), ("n_gen", 5), seed=0)
    kept = sorted(front.F[:, 1].tolist())
    assert multi.n_obj == 2 and set(kept) <= {3, 4, 5} and len(set(kept)) >= 2
    assert all(multi.n_var - len(multi.decode(x)) == f for x, f in zip(front.X, front.F[:, 1]))


def test_block_search_checkpoints_and_resumes_like_an_uninterrupted_run(calibration, tmp_path):
    model = deep_model()
    evaluator = BlockRemovalEvaluator(model, calibration)
    problem = BlockRemovalProblem(model, calibration, 2, evaluator=evaluator)
    full = run_search(problem, block_removal_algorithm(problem, pop_size=4), ("n_gen", 4), seed=1,
                      checkpoint_dir=tmp_path / "a")
    run_search(problem, block_removal_algorithm(problem, pop_size=4), ("n_gen", 2), seed=1,
               checkpoint_dir=tmp_path / "b")
    resumed = run_search(problem, None, ("n_gen", 4), checkpoint_dir=tmp_path / "b", resume=True)
    assert np.array_equal(resumed.X, full.X) and resumed.F[0] == full.F[0]


def test_bad_input_names_the_fix(calibration):
    model = deep_model()
    with pytest.raises(ValueError, match="keep at least one"):
        remove_blocks_(model, range(6))
    with pytest.raises(ValueError, match="outside 0..5"):
        remove_blocks_(model, [7])
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        BlockRemovalProblem(model, calibration, 6)
    with pytest.raises(ValueError, match="low <= high"):
        BlockRemovalProblem(model, calibration, (3, 1))
    with pytest.raises(ValueError, match="kl or ppl"):
        BlockRemovalProblem(model, calibration, 1, objective="loss")
    with pytest.raises(ValueError, match="unsupported architecture"):
        remove_blocks_(torch.nn.Linear(2, 2), [0])
