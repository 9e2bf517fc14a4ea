"""The block-major population evaluator against one full forward per candidate."""

import copy
import math

import pytest
import torch

from optishear_moo.evaluation import DenseOutputs, kl_to_dense
from optishear_moo.evaluation.divergence import final_hidden
from optishear_moo.evaluation.population import SKIP, BlockwiseEvaluator
from optishear_moo.evop.blocks import remove_blocks_
from optishear_moo.models.adapters import get_adapter
from tests.conftest import assert_same_weights, make_tiny_model


def _zero_smallest(layers, share):
    for layer in layers:
        weight = layer.weight
        k = int(share * weight.numel())
        threshold = weight.abs().flatten().kthvalue(k).values
        weight.masked_fill_(weight.abs() <= threshold, 0)


def _form(index, layers, share):
    _zero_smallest(layers, share)


def _apply(model, candidate):
    """The candidate made in a copy of the model, for a plain full forward."""
    model = copy.deepcopy(model)
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    for index, (block, key) in enumerate(zip(blocks, candidate)):
        if key not in (None, SKIP):
            _zero_smallest(adapter.block_layers(block, index), key)
    return remove_blocks_(model, [index for index, key in enumerate(candidate) if key == SKIP])


def _output_error_and_ppl(model, reference, fidelity):
    error, norm, nll, n = 0.0, 0.0, 0.0, 0
    for batch, dense_hidden in reference.batches(fidelity):
        error += float((final_hidden(model, batch) - dense_hidden).square().sum())
        norm += float(dense_hidden.square().sum())
        logits = model(input_ids=batch).logits[:, :-1]
        nll += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(),
                                                       reduction="sum"))
        n += batch[:, 1:].numel()
    return [(error / norm) ** 0.5, math.exp(nll / n)]


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2", "opt"])
def test_each_candidate_scores_as_its_own_full_forward(family, calibration):
    model = make_tiny_model(family)
    n_blocks = len(get_adapter(model).blocks(model))
    reference = DenseOutputs.build(model, calibration, batch_size=4)
    before = make_tiny_model(family)
    candidates = [(None,) * n_blocks, (0.5,) * n_blocks, (0.3,) + (None,) * (n_blocks - 1),
                  (None,) + (SKIP,) + (0.6,) * (n_blocks - 2)]
    evaluator = BlockwiseEvaluator(model, reference)
    for fidelity in (1.0, 0.5):
        scores = evaluator.score(candidates, _form, fidelity, ("kl", "output_error", "ppl"))
        applied = [_apply(model, c) for c in candidates]
        expected = [[kl_to_dense(m, reference, fidelity), *_output_error_and_ppl(m, reference, fidelity)]
                    for m in applied]
        got = [[s["kl"], s["output_error"], s["ppl"]] for s in scores]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-4, atol=1e-6)
    assert evaluator.kl(candidates, _form) == [s["kl"] for s in evaluator.score(candidates, _form)]
    assert scores[0]["kl"] < 1e-9 < min(s["kl"] for s in scores[1:])
    assert_same_weights(model, before)  # the model comes back unchanged


def test_shared_prefixes_and_duplicates_run_once(tiny_llama, calibration):
    reference = DenseOutputs.build(tiny_llama, calibration, batch_size=6)
    evaluator = BlockwiseEvaluator(tiny_llama, reference)
    formed = []
    candidates = [(0.5, 0.5, 0.5), (0.5, 0.5, 0.6), (0.5, 0.6, 0.6), (0.5, 0.5, 0.5), (0.5, SKIP, 0.6)]
    scores = evaluator.kl(candidates, lambda i, layers, key: (formed.append((i, key)), _form(i, layers, key)))
    # distinct prefixes: (0.5) | (0.5,0.5) (0.5,0.6) | (..,0.5) (..,0.6) (0.5,0.6,0.6) (0.5,skip,0.6)
    assert evaluator.n_block_forwards == 1 + 2 + 4
    assert scores[0] == scores[3] and len(set(scores)) == 4
    # a key is formed once per block, whatever number of prefixes runs it
    assert sorted(formed) == [(0, 0.5), (1, 0.5), (1, 0.6), (2, 0.5), (2, 0.6)]


def test_the_model_is_put_back_when_forming_fails(tiny_llama, calibration):
    reference = DenseOutputs.build(tiny_llama, calibration, batch_size=6)

    def form(index, layers, key):
        _zero_smallest(layers, 0.5)
        if index == 1:
            raise RuntimeError("broken variant")

    with pytest.raises(RuntimeError, match="broken variant"):
        BlockwiseEvaluator(tiny_llama, reference).kl([("a", "b", "c")], form)
    assert_same_weights(tiny_llama, make_tiny_model("llama"))


def test_bad_input_is_refused(tiny_llama, calibration):
    reference = DenseOutputs.build(tiny_llama, calibration, batch_size=6)
    with pytest.raises(ValueError, match="one key per block"):
        BlockwiseEvaluator(tiny_llama, reference).kl([(None, None)], _form)
    with pytest.raises(ValueError, match="states must be one of"):
        BlockwiseEvaluator(tiny_llama, reference, states="disk")
    with pytest.raises(ValueError, match="measures must be among"):
        BlockwiseEvaluator(tiny_llama, reference).score([(None,) * 3], _form, measures=("bogus",))
    with pytest.raises(ValueError, match="fidelity"):
        BlockwiseEvaluator(tiny_llama, reference).kl([(None,) * 3], _form, fidelity=0)


@pytest.mark.parametrize("device", ["cpu:0", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_blocks_visit_the_compute_device_one_at_a_time(device, calibration):
    """The model stays where it is; each block (and the head) goes to ``device`` for its turn."""
    model = make_tiny_model("llama")
    reference = DenseOutputs.build(model, calibration, batch_size=3)
    candidates = [(0.5, 0.5, 0.5), (None, SKIP, 0.6)]
    at_home = BlockwiseEvaluator(model, reference).kl(candidates, _form)
    visited = []
    blocks = get_adapter(model).blocks(model)
    hooks = [block.register_forward_pre_hook(lambda m, args: visited.append(str(args[0].device)))
             for block in blocks]
    away = BlockwiseEvaluator(model, reference, device=device, states="host")
    scores = away.kl(candidates, _form)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(at_home), rtol=1e-4, atol=1e-6)
    assert any(d.startswith(device.split(":")[0]) for d in visited)  # (the embeddings' capture runs at home)
    assert all(p.device == torch.device("cpu") for p in model.parameters())  # sent back home
    assert_same_weights(model, make_tiny_model("llama"))


def test_dense_distributions_are_kept_when_small_and_change_no_score(tiny_llama, calibration):
    candidates = [(0.5, 0.5, 0.5), (None, SKIP, 0.6)]
    plain = DenseOutputs.build(tiny_llama, calibration, batch_size=4)
    recomputed = BlockwiseEvaluator(tiny_llama, plain, cache_dense=False).score(candidates, _form, 0.5,
                                                                                    ("kl", "ppl"))
    assert plain.distributions is None
    reference = DenseOutputs.build(tiny_llama, calibration, batch_size=4)
    cached = BlockwiseEvaluator(tiny_llama, reference).score(candidates, _form, 0.5, ("kl", "ppl"))
    vocab = tiny_llama.config.vocab_size
    assert [d.probs.shape for d in reference.distributions] == [(4 * 32, vocab), (2 * 32, vocab)]
    for a, b in zip(cached, recomputed):
        assert a == pytest.approx(b, rel=1e-5)
    assert not DenseOutputs.build(tiny_llama, calibration).cache_distributions(tiny_llama, limit=vocab * 10)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2", "opt"])
def test_candidates_stacked_through_a_block_score_as_one_at_a_time(family, calibration):
    model = make_tiny_model(family)
    n_blocks = len(get_adapter(model).blocks(model))
    reference = DenseOutputs.build(model, calibration, batch_size=4)  # windows in batches of 4 and 2
    candidates = [(0.5,) * n_blocks, (0.3,) * n_blocks, (None,) * n_blocks,
                  (0.6, SKIP) + (0.5,) * (n_blocks - 2), (None, 0.4) + (None,) * (n_blocks - 2),
                  (0.5,) * n_blocks]
    measures = ("kl", "output_error", "ppl")
    alone = BlockwiseEvaluator(model, reference, stack=1)
    expected = alone.score(candidates, _form, measures=measures)
    passes = []
    blocks = get_adapter(model).blocks(model)
    hooks = [block.register_forward_pre_hook(lambda m, args: passes.append(args[0].shape[0]))
             for block in blocks]
    stacked = BlockwiseEvaluator(model, reference, stack=3)
    got = stacked.score(candidates, _form, measures=measures)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(torch.tensor([[s[m] for m in measures] for s in got]),
                               torch.tensor([[s[m] for m in measures] for s in expected]),
                               rtol=1e-5, atol=1e-7)
    assert stacked.n_block_forwards == alone.n_block_forwards
    assert max(passes) == 3 * 4 and 3 * 2 in passes  # three prefixes' windows in one pass
    layers = get_adapter(model).prunable_layers(model)
    assert all(vars(layer.module).get("forward") is None for layer in layers)  # forwards put back
    assert_same_weights(model, make_tiny_model(family))


def test_a_stacked_pass_puts_the_model_back_when_forming_fails(tiny_llama, calibration):
    reference = DenseOutputs.build(tiny_llama, calibration, batch_size=6)

    def form(index, layers, key):
        _zero_smallest(layers, 0.5)
        if key == "bad":
            raise RuntimeError("broken variant")

    with pytest.raises(RuntimeError, match="broken variant"):
        BlockwiseEvaluator(tiny_llama, reference, stack=4).kl([("a", "a", "a"), ("a", "bad", "a")], form)
    assert_same_weights(tiny_llama, make_tiny_model("llama"))
    with pytest.raises(ValueError, match="stack must be 'auto' or a whole number"):
        BlockwiseEvaluator(tiny_llama, reference, stack=0)


def test_a_stacked_pass_out_of_memory_runs_again_narrower(tiny_llama, calibration, monkeypatch):
    reference = DenseOutputs.build(tiny_llama, calibration, batch_size=4)
    candidates = [(0.5, 0.5, 0.5), (0.3, 0.3, 0.3), (None, None, None), (0.6, SKIP, 0.5), (None, 0.4, None),
                  (0.2, 0.2, 0.2)]
    alone = BlockwiseEvaluator(tiny_llama, reference, stack=1)
    expected = alone.kl(candidates, _form)
    widths = []
    bmm = torch.bmm

    def short_of_memory(inputs, weights):  # the device holds two candidates' products at a time
        widths.append(len(weights))
        if len(weights) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return bmm(inputs, weights)

    monkeypatch.setattr(torch, "bmm", short_of_memory)
    evaluator = BlockwiseEvaluator(tiny_llama, reference, stack=6)
    with pytest.warns(RuntimeWarning, match="5 candidates stacked through a block ran out of device memory"):
        got = evaluator.kl(candidates, _form)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-7)
    assert widths[0] == 5 and max(widths[1:]) == 2  # block 0's 5 prefixes, then at most 2 at a time
    assert evaluator.n_block_forwards == alone.n_block_forwards
    layers = get_adapter(tiny_llama).prunable_layers(tiny_llama)
    assert all(vars(layer.module).get("forward") is None for layer in layers)  # forwards put back
    assert_same_weights(tiny_llama, make_tiny_model("llama"))


@pytest.mark.cuda
def test_auto_stacks_candidates_on_a_gpu(calibration):
    model = make_tiny_model("llama")
    reference = DenseOutputs.build(model, calibration, batch_size=3)
    candidates = [(0.5, 0.5, 0.5), (0.3, 0.3, 0.3), (0.6, SKIP, 0.5), (None, 0.4, None)]
    alone = BlockwiseEvaluator(model, reference, device="cuda", stack=1).kl(candidates, _form)
    passes = []
    hooks = [block.register_forward_pre_hook(lambda m, args: passes.append(args[0].shape[0]))
             for block in get_adapter(model).blocks(model)]
    stacked = BlockwiseEvaluator(model, reference, device="cuda").kl(candidates, _form)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(torch.tensor(stacked), torch.tensor(alone), rtol=1e-4, atol=1e-6)
    assert max(passes) > 3  # "auto" put several prefixes through a block at once
    assert_same_weights(model, make_tiny_model("llama"))
