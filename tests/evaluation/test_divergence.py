"""The final comparison with the dense model read in vocabulary slices (the LM head of a model
streamed from disk) against the whole-head comparison and float64 arithmetic."""

import pytest
import torch
import torch.nn.functional as F

from optishear_moo.evaluation import DenseOutputs
from optishear_moo.evaluation.divergence import MEASURES, distance_to_dense, distances_by_vocab_slices
from tests.conftest import make_tiny_model


def _model(head: str):
    model = make_tiny_model("llama")
    if head == "bias and soft-capping":
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone(), requires_grad=False)
        model.lm_head.bias = torch.nn.Parameter(torch.randn(model.lm_head.out_features), requires_grad=False)
        model.config.final_logit_softcapping = 2.0
    return model


def _kl_in_float64(model, hidden, dense):
    def log_probs(h):
        logits = F.linear(h.double(), model.lm_head.weight.double(),
                          None if model.lm_head.bias is None else model.lm_head.bias.double())
        cap = getattr(model.config, "final_logit_softcapping", None)
        return F.log_softmax(torch.tanh(logits / cap) * cap if cap else logits, dim=-1)
    p, q = log_probs(dense.flatten(0, 1)), log_probs(hidden.flatten(0, 1))
    return float((p.exp() * (p - q)).sum()), p.shape[0]


@pytest.mark.parametrize("slice_bytes", [1, 5_000, 1 << 30], ids=["row by row", "uneven slices", "whole"])
@pytest.mark.parametrize("head", ["plain", "bias and soft-capping"])
def test_vocabulary_slices_compare_as_the_whole_head(head, slice_bytes, calibration):
    model = _model(head)
    reference = DenseOutputs.build(model, calibration[:5], batch_size=2)
    torch.manual_seed(1)
    dense = reference.head_inputs
    candidates = [list(dense)] + [[h + noise * torch.randn_like(h) for h in dense] for noise in (0.5, 2.0)]
    got = distances_by_vocab_slices(model, candidates, reference.batches(), MEASURES, slice_bytes=slice_bytes)
    assert got[0]["kl"] == pytest.approx(0, abs=1e-9) and got[0]["output_error"] == 0
    for hidden, values in zip(candidates[1:], got[1:]):
        batches = ((h, d, ids, None) for h, (ids, d) in zip(hidden, reference.batches()))
        whole = distance_to_dense(model, batches, MEASURES)
        assert values["ppl"] == pytest.approx(whole["ppl"], rel=1e-6)
        assert values["output_error"] == pytest.approx(whole["output_error"], rel=1e-6)
        assert values["kl"] == pytest.approx(whole["kl"], rel=1e-4)
        sums = [_kl_in_float64(model, h, d) for h, (_, d) in zip(hidden, reference.batches())]
        exact = sum(s for s, _ in sums) / sum(n for _, n in sums)
        assert values["kl"] == pytest.approx(exact, rel=1e-5)  # (closer than the whole head's float32)


@pytest.mark.parametrize("head", ["plain", "bias and soft-capping"])
def test_kept_dense_distributions_compare_as_recomputed_logits(head, calibration):
    """Logit differences against the kept distributions give the KL and perplexity of the plain
    comparison, the KL within 1e-5 of float64 (the plain path's float32 log-probabilities: 4e-4);
    a dense candidate is exactly 0; a candidate whose logits leave exp's float32 range takes the
    shifted path."""
    model = _model(head)
    reference = DenseOutputs.build(model, calibration[:5], batch_size=2)
    assert reference.cache_distributions(model)
    torch.manual_seed(1)
    dense = reference.head_inputs
    candidates = [list(dense)] + [[h + noise * torch.randn_like(h) for h in dense]
                                  for noise in (0.05, 0.5, 2.0)]
    candidates.append([h * 300 for h in dense])  # logit differences past 88

    def batches(hidden, kept):
        return ((h, d, ids, reference.dense_distribution(i, ids.numel()) if kept else None)
                for i, (h, (ids, d)) in enumerate(zip(hidden, reference.batches())))

    assert distance_to_dense(model, batches(candidates[0], True), ("kl",))["kl"] == 0
    for hidden in candidates[1:]:
        kept = distance_to_dense(model, batches(hidden, True), MEASURES, chunk_tokens=7)
        plain = distance_to_dense(model, batches(hidden, False), MEASURES)
        assert kept["ppl"] == pytest.approx(plain["ppl"], rel=1e-5)
        assert kept["output_error"] == plain["output_error"]
        sums = [_kl_in_float64(model, h, d) for h, (_, d) in zip(hidden, reference.batches())]
        exact = sum(s for s, _ in sums) / sum(n for _, n in sums)
        assert kept["kl"] == pytest.approx(exact, rel=1e-5)
        assert plain["kl"] == pytest.approx(exact, rel=1e-3)  # (float32 log-probabilities: 4e-4 off)
