"""Calibration sets: ``n_samples`` token windows of ``seq_len`` tokens, drawn with a seed."""

from __future__ import annotations

import numpy as np
import torch

from .corpora import corpus_text

DEFAULT_CALIBRATION_SOURCE = "gutenberg"


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as a 1-D ``int64`` tensor, without special tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long)


def _validate(n_samples: int, seq_len: int) -> None:
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an integer of at least 2 tokens, got {seq_len!r}")


def random_windows(tokens: torch.Tensor, n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """``n_samples`` windows of ``seq_len`` tokens at seeded uniform random offsets.

    Returns ``(n_samples, seq_len)`` int64.
    """
    _validate(n_samples, seq_len)
    if tokens.numel() < seq_len:
        raise ValueError(
            f"the calibration text has only {tokens.numel()} tokens, fewer than seq_len={seq_len}: "
            "use a longer text or a shorter --seq-len"
        )
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, tokens.numel() - seq_len + 1, size=n_samples)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])


def load_calibration(
    tokenizer,
    n_samples: int = 32,
    seq_len: int = 512,
    seed: int = 0,
    source: str = DEFAULT_CALIBRATION_SOURCE,
) -> torch.Tensor:
    """A calibration batch of token ids, shape ``(n_samples, seq_len)``, dtype ``int64``.

    ``source`` is a shipped corpus (``"gutenberg"``, ``"wikitext2-valid"``), a text file path,
    or ``"hf:NAME[:CONFIG][:SPLIT]"``. Windows start at seeded random offsets of the tokenized
    text, so the same seed gives the same batch. The papers use 128 x 2048 tokens; the
    default 32 x 512 keeps one dense pass of a 135M model under a minute on two CPU cores.
    """
    _validate(n_samples, seq_len)
    text = corpus_text(source)
    if not text.strip():
        raise ValueError(f"calibration source {source!r} holds no text")
    return random_windows(tokenize_text(tokenizer, text), n_samples, seq_len, seed)
