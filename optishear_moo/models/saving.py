"""Saving a pruned model the way it will be used: in its own precision, with what it holds."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .loading import resolve_dtype
from .streaming import make_resident

SAVE_DTYPES = ("auto", "bfloat16", "float16", "float32")


def save_dtype(model: nn.Module, dtype: str | torch.dtype = "auto") -> torch.dtype:
    """``dtype``, or with ``"auto"`` the precision of the checkpoint ``model`` was loaded from (its
    ``config.json``), bfloat16 where there was none (a quantized GGUF: 4-bit weights that bfloat16
    holds at half float32's size)."""
    if dtype != "auto":
        return resolve_dtype(dtype)
    source = getattr(model, "source_dtype", None)
    return source if source in (torch.bfloat16, torch.float16, torch.float32) else torch.bfloat16


def save_model(model: nn.Module, tokenizer, directory: str | Path, dtype: str | torch.dtype = "auto",
               description: dict | None = None) -> Path:
    """Save ``model`` and ``tokenizer`` with ``save_pretrained`` into ``directory`` (staged, moved
    into place when complete), in ``dtype`` (see :func:`save_dtype`; the model's parameters are
    converted in place, its buffers – rotary frequencies – kept as a reloaded model has them, so
    the model in memory and the one reloaded give the same logits), with ``description`` –
    method, sparsity, N:M pattern, the plan or levels – recorded in ``config.json`` under
    ``"pruning"`` so a reader knows what it holds. Returns the directory."""
    from ..outputs import save_directory

    dtype = save_dtype(model, dtype)
    make_resident(model)  # what is streamed from disk is read in: the files may be the ones replaced
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.to(dtype)
    model.config.dtype = dtype
    if description is not None:
        model.config.pruning = description
    return save_directory(directory, lambda staging: (model.save_pretrained(staging),
                                                      tokenizer.save_pretrained(staging)))
