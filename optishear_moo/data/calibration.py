"""Calibration sets: ``n_samples`` token windows of ``seq_len`` tokens, drawn with a seed."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SettingError, param
from .cluster_sampling import (
    DiversityReport,
    Embedder,
    candidate_windows,
    cluster_embeddings,
    diversity_of,
    draw_across_clusters,
    hidden_state_embedder,
)
from .corpora import corpus_text

DEFAULT_CALIBRATION_SOURCE = "gutenberg"
SAMPLINGS = ("random", "cluster")
DEFAULT_N_CLUSTERS = 8


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as a 1-D ``int64`` tensor, without special tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long)


def bos_token_id(tokenizer) -> int | None:
    """The BOS token id when ``tokenizer`` adds one to every text by default (Gemma, Llama 2...),
    else None. Windows fed to such a model must start with it, as its training text did."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return int(bos) if ids and ids[0] == bos else None


def with_bos(windows: torch.Tensor, bos: int | None) -> torch.Tensor:
    """``(n, L)`` windows as they are, or ``(n, L + 1)`` with ``bos`` in front."""
    if bos is None:
        return windows
    return torch.cat([torch.full((len(windows), 1), bos, dtype=windows.dtype), windows], dim=1)


def check_calibration(calibration, model=None, what: str = "calibration") -> torch.Tensor:
    """``calibration`` if it is a usable ``(n_samples, seq_len)`` batch of token ids for ``model``;
    a ``ValueError`` naming the problem (and :func:`load_calibration`) otherwise."""
    hint = "build it with optishear_moo.load_calibration(tokenizer, n_samples, seq_len)"
    if not isinstance(calibration, torch.Tensor):
        raise ValueError(f"{what} must be a torch tensor of token ids, got {type(calibration).__name__}: "
                         f"{hint}")
    if calibration.ndim != 2 or calibration.shape[0] == 0 or calibration.shape[1] < 2:
        raise ValueError(f"{what} must be a non-empty (n_samples, seq_len >= 2) tensor of token ids, got "
                         f"shape {tuple(calibration.shape)}: {hint}")
    if calibration.dtype.is_floating_point or calibration.dtype.is_complex or calibration.dtype == torch.bool:
        raise ValueError(f"{what} holds {calibration.dtype} values, not token ids (int64): {hint}")
    if calibration.device.type == "meta":
        raise ValueError(f"{what} is on the meta device and holds no values: {hint}")
    vocab = _vocabulary_size(model)
    low, high = int(calibration.min()), int(calibration.max())
    if low < 0 or (vocab is not None and high >= vocab):
        raise ValueError(f"{what} holds token ids from {low} to {high}, outside the model's vocabulary of "
                         f"{vocab}: tokenize with the model's own tokenizer")
    check_context(calibration.shape[1], model)
    return calibration


def check_context(seq_len: int, model, name: str = "seq_len") -> None:
    """A :class:`SettingError` when windows of ``seq_len`` tokens are longer than the model's context
    (``max_position_embeddings`` of its config)."""
    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(context, int) and seq_len > context:
        raise SettingError(f"{param(name)} {seq_len} is longer than the model's context of {context} tokens: "
                           f"choose at most {context}")


def _vocabulary_size(model) -> int | None:
    if model is None:
        return None
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "num_embeddings"):
        return int(embeddings.num_embeddings)
    return getattr(getattr(model, "config", None), "vocab_size", None)


def _validate(n_samples: int, seq_len: int) -> None:
    if not isinstance(n_samples, int) or n_samples < 1:
        raise SettingError(f"{param('n_samples')} must be a positive integer, got {n_samples!r}")
    if not isinstance(seq_len, int) or seq_len < 2:
        raise SettingError(f"{param('seq_len')} must be an integer of at least 2 tokens, got {seq_len!r}")


def random_windows(tokens: torch.Tensor, n_samples: int, seq_len: int, seed: int,
                   bos: int | None = None) -> torch.Tensor:
    """``n_samples`` windows of ``seq_len`` tokens at seeded uniform random offsets; with ``bos``
    each window is that token followed by ``seq_len - 1`` text tokens.

    Returns ``(n_samples, seq_len)`` int64.
    """
    _validate(n_samples, seq_len)
    if bos is not None:
        return with_bos(random_windows(tokens, n_samples, seq_len - 1, seed), bos)
    if tokens.numel() < seq_len:
        raise SettingError(f"the calibration text has only {tokens.numel()} tokens, fewer than "
                           f"{param('seq_len')}={seq_len}: use a longer text or a shorter {param('seq_len')}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, tokens.numel() - seq_len + 1, size=n_samples)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])


def _source_tokens(tokenizer, source: str) -> torch.Tensor:
    text = corpus_text(source)
    if not text.strip():
        raise ValueError(f"calibration source {source!r} holds no text")
    return tokenize_text(tokenizer, text)


def _embedder(model, embedder: Embedder | None, batch_size: int, progress: bool) -> Embedder:
    if embedder is not None:
        return embedder
    if model is None:
        raise ValueError("cluster sampling embeds the candidate windows: pass model= (the model being "
                         "pruned) or embedder= (any callable from token ids to embeddings)")
    return hidden_state_embedder(model, batch_size, progress)


def load_calibration(
    tokenizer,
    n_samples: int = 32,
    seq_len: int = 512,
    seed: int = 0,
    source: str = DEFAULT_CALIBRATION_SOURCE,
    sampling: str = "random",
    n_clusters: int | None = None,
    model=None,
    embedder: Embedder | None = None,
    pool_size: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> torch.Tensor:
    """A calibration batch of token ids, shape ``(n_samples, seq_len)``, dtype ``int64``; every
    window starts with the BOS token when the tokenizer adds one (:func:`bos_token_id`).

    ``source`` is a shipped corpus (``"gutenberg"``, ``"wikitext2-valid"``), a text file path,
    or ``"hf:NAME[:CONFIG][:SPLIT]"``. The papers use 128 x 2048 tokens; the default 32 x 512
    keeps one dense pass of a 135M model under a minute on two CPU cores.

    ``sampling="random"`` (default): windows at seeded random offsets of the tokenized text.
    ``sampling="cluster"`` (EvoP's CCDS): ``pool_size`` (default ``4 * n_samples``) non-overlapping
    candidate windows are embedded with ``embedder`` (default: mean-pooled last hidden states of
    ``model``), clustered into ``n_clusters`` (default 8, at most ``n_samples``) with k-means, and
    the batch is drawn evenly across the clusters. Both are deterministic for a given ``seed``.
    """
    _validate(n_samples, seq_len)
    if model is not None:
        check_context(seq_len, model)
    if sampling not in SAMPLINGS:
        raise SettingError(f"{param('sampling')} {sampling!r} is not a calibration sampling: choose one of "
                           f"{', '.join(SAMPLINGS)}")
    bos = bos_token_id(tokenizer)
    if sampling == "random":
        return random_windows(_source_tokens(tokenizer, source), n_samples, seq_len, seed, bos)
    n_clusters = min(DEFAULT_N_CLUSTERS, n_samples) if n_clusters is None else n_clusters
    if not isinstance(n_clusters, int) or not 1 <= n_clusters <= n_samples:
        raise SettingError(f"{param('n_clusters')} must be an integer between 1 and "
                           f"{param('n_samples')}={n_samples}, got {n_clusters!r}")
    embed = _embedder(model, embedder, batch_size, progress)
    text_len = seq_len - (bos is not None)
    pool = with_bos(candidate_windows(_source_tokens(tokenizer, source), text_len, pool_size or 4 * n_samples,
                                      seed), bos)
    if len(pool) < n_samples:
        raise SettingError(f"the calibration text holds only {len(pool)} windows of {seq_len} tokens, fewer "
                           f"than {param('n_samples')}={n_samples}: use a longer text or a shorter "
                           f"{param('seq_len')}")
    embeddings = embed(pool)
    labels = cluster_embeddings(embeddings, n_clusters, seed).labels_
    return pool[torch.as_tensor(draw_across_clusters(labels, n_samples, seed))]


def calibration_diversity(
    calibration: torch.Tensor,
    tokenizer,
    model=None,
    embedder: Embedder | None = None,
    source: str = DEFAULT_CALIBRATION_SOURCE,
    n_clusters: int = DEFAULT_N_CLUSTERS,
    pool_size: int = 128,
    seed: int = 0,
    batch_size: int = 8,
) -> DiversityReport:
    """How diverse ``calibration`` (``(n_samples, seq_len)`` ids) is, as a :class:`DiversityReport`.

    The reference clusters are k-means clusters of ``pool_size`` windows of ``source`` (same
    ``seq_len``, fixed ``seed``), so reports of different samplings of one source compare.
    """
    embed = _embedder(model, embedder, batch_size, progress=False)
    bos = bos_token_id(tokenizer)
    text_len = calibration.shape[1] - (bos is not None)
    pool = with_bos(candidate_windows(_source_tokens(tokenizer, source), text_len, pool_size, seed), bos)
    reference = cluster_embeddings(embed(pool), min(n_clusters, len(pool)), seed)
    return diversity_of(embed(calibration), reference)
