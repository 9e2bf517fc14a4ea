import pytest
import torch

from optishear_moo.activations import collect_input_statistics
from optishear_moo.models import get_adapter, load_model
from optishear_moo.models.sliced import SkippedAttention, SkippedMLP
from optishear_moo.pruning.structured import (
    LevelDatabase,
    apply_levels_,
    default_mlp_levels,
    kept_parameters,
    removal_path,
)

from .conftest import make_tiny_model, tiny_config


def masked_copy(database, levels, model=None):
    """The dense ``model`` (default: the tiny Llama) with removed columns of o_proj/down_proj
    zeroed and the kept ones set to the database's re-fitted weights: numerically what slicing
    must reproduce."""
    model = model if model is not None else make_tiny_model("llama")
    for index, block in enumerate(get_adapter(model).blocks(model)):
        for unit, layer, level in (("attention", block.self_attn.o_proj, levels[index][0]),
                                   ("mlp", block.mlp.down_proj, levels[index][1])):
            entry = database.get(index, unit, level)
            full = torch.zeros_like(layer.weight)
            full[:, entry.kept] = entry.weight
            layer.weight.copy_(full)
    return model


def test_levels_are_nested_and_least_squares_beats_plain_removal(calibration):
    model = make_tiny_model("llama")
    database = LevelDatabase.build(model, calibration, mlp_levels=8)
    assert database.n_levels == {"attention": 2, "mlp": 8}
    layer = get_adapter(model).blocks(model)[1].mlp.down_proj
    stats = collect_input_statistics(model, calibration, layers=[
        x for x in get_adapter(model).prunable_layers(model) if x.name == "model.layers.1.mlp.down_proj"],
        with_gram=True)
    gram = stats["model.layers.1.mlp.down_proj"].gram.double()
    previous = None
    for level in range(9):
        entry = database.get(1, "mlp", level)
        assert entry.weight.shape == (64, 128 - 16 * level) and len(entry.kept) == 128 - 16 * level
        if previous is not None:
            assert set(entry.kept.tolist()) < set(previous.tolist())  # nested levels
        previous = entry.kept
        if 0 < level < 8:
            def error(w_kept, kept=entry.kept):
                delta = layer.weight.double().clone()
                delta[:, kept] -= w_kept.double()
                return float(torch.trace(delta @ gram @ delta.t()))
            plain = error(layer.weight[:, entry.kept])
            assert error(entry.weight) < 0.9 * plain
    assert torch.equal(database.get(1, "mlp", 0).weight, layer.weight)
    attention = database.get(0, "attention", 1)
    assert attention.weight.shape == (64, 32) and len(attention.kept) == 32  # one of two KV groups


def test_removal_path_first_removes_a_dead_channel():
    torch.manual_seed(0)
    x = torch.randn(200, 6)
    x[:, 4] = 0  # channel 4 never fires
    path = removal_path(torch.randn(3, 6), x.t() @ x, 1, [0, 1, 3])
    assert 4 not in path[1].kept.tolist() and len(path[3].kept) == 3


@pytest.mark.parametrize("levels", [[[1, 3], [0, 8], [2, 1]], [[0, 0], [2, 0], [1, 5]]])
def test_sliced_model_equals_masked_model_and_really_shrinks(levels, calibration, tmp_path, tiny_tokenizer):
    model = make_tiny_model("llama")
    database = LevelDatabase.build(model, calibration, mlp_levels=8, directory=tmp_path / "db")
    assert len(list((tmp_path / "db").glob("*.pt"))) == 6
    expected = masked_copy(database, levels)(calibration).logits
    dense_size = sum(p.numel() for p in model.parameters())
    apply_levels_(model, database, levels)
    torch.testing.assert_close(model(calibration).logits, expected, rtol=1e-4, atol=1e-5)
    removed = dense_size - sum(p.numel() for p in model.parameters())
    assert removed == database.unit_parameters("attention") * 3 + database.unit_parameters("mlp") * 3 \
        - kept_parameters(database, levels) + 0
    blocks = get_adapter(model).blocks(model)
    for (a, m), block, sizes in zip(levels, blocks, model.config.structured_layers):
        skipped = sizes["num_key_value_heads"] == 0
        assert isinstance(block.self_attn, SkippedAttention) == (a == 2) == skipped
        assert isinstance(block.mlp, SkippedMLP) == (m == 8) == (sizes["intermediate_size"] == 0)
        if a < 2:  # GQA stays valid: q heads = 2 per kv head
            assert block.self_attn.q_proj.out_features == 2 * block.self_attn.k_proj.out_features
            assert sizes["num_attention_heads"] == 2 * sizes["num_key_value_heads"]
    model.save_pretrained(tmp_path / "saved")
    tiny_tokenizer.save_pretrained(tmp_path / "saved")
    reloaded, _ = load_model(str(tmp_path / "saved"))
    torch.testing.assert_close(reloaded(calibration).logits, model(calibration).logits)
    cached = reloaded.generate(calibration[:1, :6], max_new_tokens=4, do_sample=False)
    assert cached.shape == (1, 10)


def test_qwen2_biases_follow_the_kept_heads(calibration):
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("qwen2")).eval().requires_grad_(False)
    for p in model.parameters():
        if p.ndim == 1:
            p.normal_()
    database = LevelDatabase.build(model, calibration, mlp_levels=4)
    levels = [[1, 1], [0, 2]]
    reference = AutoModelForCausalLM.from_config(tiny_config("qwen2")).eval().requires_grad_(False)
    reference.load_state_dict(model.state_dict())
    masked_copy(database, levels, reference)
    apply_levels_(model, database, levels)
    torch.testing.assert_close(model(calibration).logits, reference(calibration).logits, rtol=1e-4, atol=1e-5)


def test_structured_bad_input(calibration):
    with pytest.raises(ValueError, match="supports model types"):
        LevelDatabase.build(make_tiny_model("gpt2"), calibration)
    model = make_tiny_model("llama")
    with pytest.raises(ValueError, match="must divide"):
        LevelDatabase.build(model, calibration, mlp_levels=7)
    database = LevelDatabase.build(model, calibration, mlp_levels=4)
    with pytest.raises(ValueError, match="each of the 3 blocks"):
        apply_levels_(model, database, [[0, 0]])
    with pytest.raises(ValueError, match="0..\\[2, 4\\]"):
        apply_levels_(model, database, [[0, 5]] * 3)
    apply_levels_(model, database, [[2, 0]] * 3)
    with pytest.raises(ValueError, match="already sliced"):
        apply_levels_(model, database, [[0, 0]] * 3)
    assert default_mlp_levels(1536) == 12 and default_mlp_levels(128) == 8
