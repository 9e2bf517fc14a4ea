"""Held-out perplexity with the standard protocol of the pruning literature.

WikiText-2 test: the split's lines joined with blank lines (as ``"\\n\\n".join(dataset["text"])``),
tokenized once, cut into non-overlapping segments of ``seq_len`` tokens (the remainder is
dropped); perplexity is ``exp`` of the mean next-token NLL over every predicted token of every
segment. ``max_segments`` evaluates only the first segments, for quick runs. For tokenizers that
add a BOS token (Gemma...), every segment starts with it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..activations import model_device
from ..data.calibration import bos_token_id, tokenize_text, with_bos
from ..data.corpora import corpus_text
from ..errors import SettingError, param

DEFAULT_EVAL_CORPUS = "wikitext2-test"


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float
    n_tokens: int
    n_segments: int
    seq_len: int
    corpus: str

    def to_dict(self) -> dict:
        return asdict(self)


def eval_segments(
    tokenizer, seq_len: int, max_segments: int | None = None, corpus: str = DEFAULT_EVAL_CORPUS
) -> torch.Tensor:
    """The evaluation token segments, ``(n_segments, seq_len)`` int64. When the tokenizer adds a
    BOS token, each segment is BOS followed by ``seq_len - 1`` text tokens (as lm-eval and the
    Gemma reference evaluation do); the BOS itself is never predicted."""
    if seq_len < 2:
        raise SettingError(f"{param('seq_len')} must be at least 2, got {seq_len}")
    bos = bos_token_id(tokenizer)
    seq_len -= bos is not None
    text = corpus_text(corpus)
    if corpus.startswith("wikitext2"):
        text = "\n\n".join(text.splitlines(keepends=True))
    tokens = tokenize_text(tokenizer, text)
    n_segments = tokens.numel() // seq_len
    if n_segments == 0:
        raise SettingError(f"the evaluation text has {tokens.numel()} tokens, fewer than one segment of "
                           f"{param('seq_len')}={seq_len}: use a shorter one or a longer text")
    if max_segments is not None:
        if max_segments < 1:
            raise SettingError(f"{param('max_segments')} must be at least 1, got {max_segments}")
        n_segments = min(n_segments, max_segments)
    return with_bos(tokens[: n_segments * seq_len].view(n_segments, seq_len), bos)


def default_eval_seq_len(model: nn.Module, cap: int = 2048) -> int:
    return int(min(getattr(model.config, "max_position_embeddings", cap) or cap, cap))


@torch.no_grad()
def segments_nll(
    model: nn.Module, segments: torch.Tensor, batch_size: int = 1, progress: bool = False
) -> tuple[float, int]:
    """Summed next-token NLL (float64) over all predicted tokens, and their count."""
    device = model_device(model)
    total, count = 0.0, 0
    for batch in tqdm(torch.split(segments, batch_size), desc="perplexity",
                      disable=not progress, leave=False):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                              reduction="sum")
        if not torch.isfinite(nll):
            raise FloatingPointError("the model produced non-finite logits on the evaluation text")
        total += float(nll)
        count += batch[:, 1:].numel()
    return total, count


def perplexity(
    model: nn.Module,
    tokenizer,
    seq_len: int | None = None,
    max_segments: int | None = None,
    corpus: str = DEFAULT_EVAL_CORPUS,
    batch_size: int = 1,
    progress: bool = False,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``corpus`` (WikiText-2 test by default).

    ``seq_len`` defaults to the model's context length capped at 2048 (the usual setting for
    Llama-family models); ``max_segments=None`` evaluates the whole split.
    """
    seq_len = seq_len or default_eval_seq_len(model)
    segments = eval_segments(tokenizer, seq_len, max_segments, corpus)
    total, count = segments_nll(model, segments, batch_size, progress)
    mean_nll = total / count
    return PerplexityResult(math.exp(mean_nll), mean_nll, count, segments.shape[0], seq_len, corpus)
