import math

import pytest
import torch
import torch.nn.functional as F

from optishear_moo.evaluation import eval_segments, perplexity


def test_segments_are_consecutive_non_overlapping_windows(tiny_tokenizer):
    segments = eval_segments(tiny_tokenizer, seq_len=64, max_segments=5)
    more = eval_segments(tiny_tokenizer, seq_len=64, max_segments=7)
    assert segments.shape == (5, 64) and torch.equal(more[:5], segments)
    flat = more.reshape(-1)
    assert torch.equal(flat[64:128], more[1])


def test_perplexity_is_exp_of_mean_token_nll(tiny_llama, tiny_tokenizer):
    result = perplexity(tiny_llama, tiny_tokenizer, seq_len=32, max_segments=3, batch_size=2)
    segments = eval_segments(tiny_tokenizer, 32, 3)
    logits = tiny_llama(segments).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), segments[:, 1:].reshape(-1))
    assert result.n_tokens == 3 * 31 and result.n_segments == 3
    assert result.perplexity == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_bos_tokenizers_get_bos_in_front_of_every_window(tiny_llama, tiny_bos_tokenizer):
    from optishear_moo import load_calibration
    from optishear_moo.data import load_corpus

    bos = tiny_bos_tokenizer.bos_token_id
    assert tiny_bos_tokenizer("a")["input_ids"][0] == bos
    # by hand: the test split joined with blank lines, 31 text tokens per segment after a BOS
    text = "\n\n".join(load_corpus("wikitext2-test").splitlines(keepends=True))
    ids = tiny_bos_tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = torch.tensor(ids[: 3 * 31]).view(3, 31)
    segments = torch.cat([torch.full((3, 1), bos), tokens], dim=1)
    logits = tiny_llama(segments).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), segments[:, 1:].reshape(-1))
    result = perplexity(tiny_llama, tiny_bos_tokenizer, seq_len=32, max_segments=3)
    assert result.n_tokens == 3 * 31 and result.perplexity == pytest.approx(math.exp(float(nll)), rel=1e-5)
    for sampling in ("random", "cluster"):
        windows = load_calibration(tiny_bos_tokenizer, 4, 16, sampling=sampling, n_clusters=2,
                                   model=tiny_llama)
        assert windows.shape == (4, 16) and (windows[:, 0] == bos).all() and (windows[:, 1:] != bos).any()


def test_uniform_predictions_give_vocabulary_size(tiny_llama, tiny_tokenizer):
    tiny_llama.lm_head.weight.zero_()
    result = perplexity(tiny_llama, tiny_tokenizer, seq_len=16, max_segments=2)
    assert result.perplexity == pytest.approx(tiny_llama.config.vocab_size, rel=1e-4)


def test_perplexity_errors(tiny_llama, tiny_tokenizer, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("a few words")
    with pytest.raises(ValueError, match="fewer than one segment"):
        perplexity(tiny_llama, tiny_tokenizer, seq_len=64, corpus=str(short))
    with pytest.raises(ValueError, match="max_segments"):
        perplexity(tiny_llama, tiny_tokenizer, seq_len=16, max_segments=0)
    tiny_llama.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        perplexity(tiny_llama, tiny_tokenizer, seq_len=16, max_segments=1)
