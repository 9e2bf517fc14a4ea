from pathlib import Path

import pytest
import torch

from optishear_moo.data import SHIPPED_CORPORA, load_calibration, load_corpus, tokenize_text

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.parametrize(
    "name, relative",
    [("gutenberg", "gutenberg/big.txt"), ("wikitext2-valid", "wikitext-2/valid.txt"),
     ("wikitext2-test", "wikitext-2/test.txt")],
)
def test_shipped_corpora_are_the_source_texts(name, relative):
    assert name in SHIPPED_CORPORA
    source = SHARED / relative
    if not source.exists():
        pytest.skip("../shared is not next to this checkout")
    assert load_corpus(name) == source.read_text(encoding="utf-8")


def test_calibration_shape_seed_and_windows(tiny_tokenizer):
    a = load_calibration(tiny_tokenizer, n_samples=5, seq_len=40, seed=3)
    b = load_calibration(tiny_tokenizer, n_samples=5, seq_len=40, seed=3)
    c = load_calibration(tiny_tokenizer, n_samples=5, seq_len=40, seed=4)
    assert a.shape == (5, 40) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    tokens = tokenize_text(tiny_tokenizer, load_corpus("gutenberg")).tolist()
    text = " ".join(map(str, tokens))
    for window in a.tolist():  # every sample is a contiguous window of the tokenized corpus
        assert " ".join(map(str, window)) in text


def test_calibration_from_a_local_file(tiny_tokenizer, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("pruning large language models " * 50)
    batch = load_calibration(tiny_tokenizer, n_samples=3, seq_len=16, source=str(path))
    assert batch.shape == (3, 16)
    assert tiny_tokenizer.decode(batch[0]) in path.read_text()


def test_calibration_bad_input(tiny_tokenizer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ValueError, match="is empty"):
        load_calibration(tiny_tokenizer, source=str(empty))
    with pytest.raises(ValueError, match="fewer than seq_len"):
        load_calibration(tiny_tokenizer, n_samples=2, seq_len=64, source=str(short))
    with pytest.raises(ValueError, match="unknown corpus"):
        load_calibration(tiny_tokenizer, source="c4-not-shipped")
    with pytest.raises(ValueError, match="n_samples"):
        load_calibration(tiny_tokenizer, n_samples=0)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(0, 8, dtype=torch.long), "non-empty"),
    (torch.zeros(8, dtype=torch.long), "non-empty"),
    (torch.zeros(2, 8), "not token ids"),
    (torch.full((2, 8), 10_000), "outside the model's vocabulary"),
    (torch.full((2, 8), -1), "outside the model's vocabulary"),
    (torch.zeros(2, 8, dtype=torch.long, device="meta"), "meta device"),
    ([[1, 2, 3]], "torch tensor"),
])
def test_bad_calibration_tensors_are_refused_before_any_work(bad, message, tiny_llama):
    from optishear_moo import BlockRemovalProblem, OptiShearProblem, StructuredPruningProblem, prune_model

    for build in (lambda: prune_model(tiny_llama, bad, progress=False),
                  lambda: OptiShearProblem(tiny_llama, bad, 0.5),
                  lambda: BlockRemovalProblem(tiny_llama, bad, 1),
                  lambda: StructuredPruningProblem(tiny_llama, bad, 1.5)):
        with pytest.raises(ValueError, match=message):
            build()


def test_malformed_plans_name_the_file_and_field(tmp_path):
    from optishear_moo import PruningPlan

    path = tmp_path / "plan.json"
    for text, message in [("{", "could not read the plan"), ("[]", "is not an optishear-moo plan"),
                          ('{"format": "optishear-moo/plan-v1", "metric": {}}', "no field 'block_sparsity'"),
                          ('{"format": "optishear-moo/plan-v1", "metric": {"weight_transform": "cube"}, '
                           '"block_sparsity": [0.5], "target_sparsity": 0.5}', "field 'metric' is invalid")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as error:
            PruningPlan.load(path)
        assert "plan.json" in str(error.value)
