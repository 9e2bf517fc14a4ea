"""Fixtures: tiny random-initialised models built from configs (no download) and a tiny tokenizer."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import torch
from pymoo.core.callback import Callback
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from optishear_moo.data import load_corpus

VOCAB = 384


class InterruptAt(Callback):
    """A pymoo callback that stops a search like Ctrl-C once generation ``generation`` is under way."""

    def __init__(self, generation):
        super().__init__()
        self.generation = generation

    def notify(self, algorithm):
        if algorithm.n_gen == self.generation:
            raise KeyboardInterrupt


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def tiny_config(family: str):
    common = dict(vocab_size=VOCAB)
    if family == "llama":
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=256, **common)
    if family == "mistral":
        return MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=256, **common)
    if family == "qwen2":
        return Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=256, **common)
    if family == "qwen3":
        return Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, max_position_embeddings=256, **common)
    if family == "gemma3_text":  # sliding and full attention with their own rotary embeddings
        return Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                num_attention_heads=4,
                                num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                                sliding_window=8, layer_types=["sliding_attention", "full_attention"] * 2,
                                **common)
    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common)
    if family == "opt":
        return OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=256, word_embed_proj_dim=64, **common)
    raise KeyError(family)


def make_tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    return model.eval().requires_grad_(False)


@pytest.fixture
def tiny_llama():
    return make_tiny_model("llama")


@pytest.fixture
def tiny_gpt2():
    return make_tiny_model("gpt2")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE with a few hundred tokens trained on shipped text in well under a second."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([load_corpus("gutenberg")[:200_000]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


@pytest.fixture(scope="session")
def tiny_bos_tokenizer(tiny_tokenizer):
    """The tiny tokenizer adding a BOS token to every text, as Gemma's and Llama 2's do."""
    from tokenizers import processors

    backend = Tokenizer.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    bos = backend.token_to_id("<eos>")  # an id the tiny models know stands in for a BOS token
    backend.post_processor = processors.TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", bos_token="<eos>")


@pytest.fixture(scope="session")
def _calibration_batch(tiny_tokenizer):
    from optishear_moo import load_calibration

    return load_calibration(tiny_tokenizer, n_samples=6, seq_len=32, seed=0)


@pytest.fixture
def calibration(_calibration_batch):
    return _calibration_batch.clone()  # tokenizing the corpus once per session; a fresh copy per test


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer):
    """A saved tiny Llama with its tokenizer: a local model directory for load_model and the CLI."""
    directory = tmp_path / "tiny-llama"
    make_tiny_model("llama").save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M (slow tests only)."""
    from optishear_moo import load_model

    return load_model("smollm2-135m", device="cpu")


@contextlib.contextmanager
def lock_held_elsewhere(directory):
    """``directory``'s output lock held by another process (a run writing there) while in the block."""
    script = ("import fcntl, os, sys, time; d = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
              "fcntl.flock(d, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(directory / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()


def assert_same_weights(model, other) -> None:
    """Every tensor of ``model``'s state equals ``other``'s (a model left unchanged)."""
    theirs = other.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, theirs[name]), name
