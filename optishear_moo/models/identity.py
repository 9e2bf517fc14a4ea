"""A cheap fingerprint of a model's weights, so a search is never resumed on another model."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from .streaming import sample_values

SAMPLES_PER_TENSOR = 4096


@torch.no_grad()
def weights_fingerprint(model: nn.Module, samples: int = SAMPLES_PER_TENSOR) -> str:
    """SHA-256 over every parameter's name, shape, dtype and ``samples`` evenly strided values
    (all of them for smaller tensors): two models that differ in any tensor's shape, or in
    weights spread over it, get different fingerprints. Costs one strided read per tensor, so
    it stays cheap for models of any size (offloaded weights included; weights streamed from disk
    are sampled there)."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        values = sample_values(model, name, parameter, samples)
        digest.update(f"{name}|{tuple(parameter.shape)}|{parameter.dtype}|".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()
