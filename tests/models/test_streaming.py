"""Models streamed from disk (``load_model(..., offload="disk")``): blocks and embeddings read from
the safetensors files when used, dropped after; every path must give what the model in memory gives."""

import numpy as np
import pytest
import torch

from optishear_moo import OptiShearProblem, load_model, prune_model
from optishear_moo.data.cluster_sampling import hidden_state_embedder
from optishear_moo.errors import SettingError
from optishear_moo.evaluation.perplexity import segments_nll
from optishear_moo.evop import BlockRemovalEvaluator
from optishear_moo.models import get_adapter, weights_fingerprint
from optishear_moo.models.placement import compute_device, is_offloaded
from optishear_moo.models.streaming import SafetensorsWeights, is_streamed, record
from tests.conftest import make_tiny_model


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def sharded_dir(request, tmp_path, tiny_tokenizer):
    """A tiny Llama saved in several safetensors shards (with an index), embeddings tied or not."""
    model = make_tiny_model("llama")
    if not request.param:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 0.5)
    model.save_pretrained(tmp_path / "m", max_shard_size="60KB")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    reloaded, _ = load_model(str(tmp_path / "m"), device="cpu")
    return tmp_path / "m", reloaded


def _streamed_empty(model) -> bool:
    blocks = get_adapter(model).blocks(model)
    return all(p.is_meta for module in [*blocks, model.get_input_embeddings()] for p in module.parameters())


def test_a_streamed_model_computes_what_the_model_in_memory_computes(sharded_dir, calibration):
    directory, ordinary = sharded_dir
    model, _ = load_model(str(directory), device="cpu", offload="disk")
    assert is_streamed(model) and is_offloaded(model) and compute_device(model) == torch.device("cpu")
    assert _streamed_empty(model)
    with torch.no_grad():
        torch.testing.assert_close(model(calibration[:2]).logits, ordinary(calibration[:2]).logits)
    assert _streamed_empty(model)  # read for the call, dropped after it
    assert weights_fingerprint(model) == weights_fingerprint(ordinary)
    assert segments_nll(model, calibration, batch_size=3) == pytest.approx(
        segments_nll(ordinary, calibration, batch_size=3), rel=1e-6)
    np.testing.assert_allclose(hidden_state_embedder(model)(calibration[:3]),
                               hidden_state_embedder(ordinary)(calibration[:3]), rtol=1e-5, atol=1e-6)


def _assert_optishear_scores_equal(model, ordinary, calibration, rtol: float) -> None:
    settings = dict(target_sparsity=0.5, objectives=("kl", "reconstruction"), batch_size=3)
    streamed, plain = OptiShearProblem(model, calibration, **settings), OptiShearProblem(
        ordinary, calibration, **settings)
    X = streamed.initial_population(5)
    np.testing.assert_allclose(streamed.evaluate(X, return_values_of=["F"]),
                               plain.evaluate(X, return_values_of=["F"]), rtol=rtol, atol=1e-7)
    assert _streamed_empty(model)


def test_searches_score_a_streamed_model_as_the_model_in_memory(sharded_dir, calibration):
    directory, ordinary = sharded_dir
    model, _ = load_model(str(directory), device="cpu", offload="disk")
    _assert_optishear_scores_equal(model, ordinary, calibration, rtol=1e-5)
    with pytest.raises(SettingError, match="offload"):
        OptiShearProblem(model, calibration, 0.5, update="obs")
    removal = BlockRemovalEvaluator(model, calibration, 3)
    kept = BlockRemovalEvaluator(ordinary, calibration, 3)
    candidates = [[0], [1, 2], []]
    for a, b in zip(removal.evaluate_many(candidates), kept.evaluate_many(candidates)):
        assert a == pytest.approx(b, rel=1e-5)
    np.testing.assert_allclose(removal.block_influence(), kept.block_influence(), rtol=1e-5)
    assert _streamed_empty(model)


def test_a_search_never_reads_the_embedding_table_or_the_head_whole(sharded_dir, calibration, monkeypatch):
    directory, ordinary = sharded_dir
    model, _ = load_model(str(directory), device="cpu", offload="disk")
    tables = {record(module).entries[0][2] for module in (model.get_input_embeddings(),
                                                            model.get_output_embeddings())}
    whole, parts, read = [], [], SafetensorsWeights.read

    def spy(self, key, device="cpu", rows=None):
        (whole if rows is None else parts).append(key)
        return read(self, key, device, rows)

    monkeypatch.setattr(SafetensorsWeights, "read", spy)
    _assert_optishear_scores_equal(model, ordinary, calibration, rtol=1e-5)  # KL: the head is used
    assert whole and not tables & set(whole)  # blocks are read whole, the tables in rows
    assert tables <= set(parts)


def test_a_scaled_embedding_with_a_padding_index_streams_as_in_memory(tmp_path, tiny_tokenizer, calibration):
    ordinary = make_tiny_model("gemma3_text")
    assert ordinary.get_input_embeddings().padding_idx is not None
    ordinary.save_pretrained(tmp_path / "g")
    tiny_tokenizer.save_pretrained(tmp_path / "g")
    model, _ = load_model(str(tmp_path / "g"), device="cpu", offload="disk")
    with torch.no_grad():
        torch.testing.assert_close(model(calibration[:2]).logits, ordinary(calibration[:2]).logits)
    assert model.get_input_embeddings().padding_idx == ordinary.get_input_embeddings().padding_idx
    assert model.get_input_embeddings().weight.is_meta


def test_pruning_a_streamed_model_keeps_the_pruned_blocks_in_host_memory(sharded_dir, calibration):
    directory, ordinary = sharded_dir
    model, _ = load_model(str(directory), device="cpu", offload="disk")
    prune_model(model, calibration, method="sparsegpt", sparsity=0.5, progress=False)
    prune_model(ordinary, calibration, method="sparsegpt", sparsity=0.5, progress=False)
    pairs = zip(get_adapter(model).prunable_layers(model), get_adapter(ordinary).prunable_layers(ordinary))
    for a, b in pairs:
        assert a.weight.device.type == "cpu"
        torch.testing.assert_close(a.weight, b.weight)
    with torch.no_grad():
        torch.testing.assert_close(model(calibration[:2]).logits, ordinary(calibration[:2]).logits)


def test_a_saved_streamed_model_reloads_whole(sharded_dir, tmp_path, tiny_tokenizer, calibration):
    from optishear_moo.models import save_model

    directory, ordinary = sharded_dir
    model, _ = load_model(str(directory), device="cpu", offload="disk")
    save_model(model, tiny_tokenizer, tmp_path / "saved", dtype="float32")
    assert not is_streamed(model)
    again, _ = load_model(str(tmp_path / "saved"), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(again(calibration[:2]).logits, ordinary(calibration[:2]).logits)


def test_streaming_needs_a_safetensors_directory(tmp_path, tiny_model_dir):
    with pytest.raises(SettingError, match="offload disk reads a safetensors directory"):
        load_model("smollm2-135m", offload="disk")  # a GGUF: refused before anything loads
    with pytest.raises(SettingError, match="offload 'memory' is unknown"):
        load_model(str(tiny_model_dir), offload="memory")
    (tiny_model_dir / "model.safetensors").rename(tiny_model_dir / "elsewhere.bin")
    with pytest.raises(ValueError, match="holds no safetensors weights"):
        load_model(str(tiny_model_dir), offload="disk")


def test_training_is_refused_and_the_structured_database_reads_blocks_as_used(tiny_model_dir, calibration):
    from optishear_moo.darwinlm import StructuredLevelDatabase
    from optishear_moo.finetuning import post_train

    model, _ = load_model(str(tiny_model_dir), device="cpu", offload="disk")
    with pytest.raises(SettingError, match="offload disk does not hold"):
        post_train(model, calibration)
    streamed = StructuredLevelDatabase.build(model, calibration, mlp_levels=8)
    assert streamed.dense is None and _streamed_empty(model)  # nothing copied, nothing kept
    ordinary = StructuredLevelDatabase.build(load_model(str(tiny_model_dir), device="cpu")[0], calibration,
                                             mlp_levels=8)
    for block in range(ordinary.n_blocks):
        for unit in ("attention", "mlp"):
            for level in range(ordinary.n_levels[unit] + 1):
                torch.testing.assert_close(streamed.get(block, unit, level).weight,
                                           ordinary.get(block, unit, level).weight, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_a_model_streamed_from_disk_onto_a_gpu_scores_as_the_model_in_memory(sharded_dir, calibration):
    directory, ordinary = sharded_dir
    model, _ = load_model(str(directory), device="cuda", offload="disk")
    assert compute_device(model).type == "cuda" and _streamed_empty(model)
    _assert_optishear_scores_equal(model, ordinary, calibration, rtol=1e-4)


def test_a_checkpoint_that_does_not_fit_its_config_is_refused_before_any_read(tiny_model_dir):
    import json

    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["intermediate_size"] *= 2
    (tiny_model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="its config.json asks for"):
        load_model(str(tiny_model_dir), offload="disk")
