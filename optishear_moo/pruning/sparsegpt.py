"""SparseGPT (Frantar & Alistarh, 2023): prune with an OBS weight update of the kept weights.

Columns are processed left to right in blocks; pruning a weight adds its error, scaled by the
inverse Hessian ``H⁻¹ = (2 X Xᵀ / n + λI)⁻¹``, to the columns still to come, so the layer output
on calibration data is preserved as well as a one-pass method can.
"""

from __future__ import annotations

import logging

import torch

from .masks import check_sparsity

logger = logging.getLogger(__name__)


def _upper_cholesky_of_inverse(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λ·mean(diag H)·I)⁻¹``; raises damping until it factors."""
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    mean_diagonal = hessian.diagonal().mean()
    for attempt in range(6):
        lam = damping * (10**attempt)
        lower, info = torch.linalg.cholesky_ex(hessian + lam * mean_diagonal * eye)
        if info == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info == 0:
                if attempt:
                    logger.warning("SparseGPT: Hessian needed damping %.3g to factor", lam)
                return upper
    raise ValueError(
        "SparseGPT: the Hessian did not factor even with heavy damping; calibrate on more tokens"
    )


@torch.no_grad()
def sparsegpt_prune_(
    weight: torch.Tensor,
    gram: torch.Tensor,
    n_tokens: int,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damping: float = 0.01,
) -> torch.Tensor:
    """Prune ``weight`` (``(out, in)``, modified **in place**) and update the kept weights.

    ``gram`` is ``Σ x xᵀ`` over ``n_tokens`` calibration inputs (``(in, in)``, float32).
    Unstructured masks are chosen per block of ``block_size`` columns (the paper's adaptive
    mask selection); N:M masks per group of ``m`` columns. Returns the keep mask.
    """
    if nm is None:
        sparsity = check_sparsity(sparsity)
    out_features, in_features = weight.shape
    if nm is not None and in_features % nm[1]:
        raise ValueError(f"{nm[0]}:{nm[1]} sparsity needs in_features divisible by {nm[1]}")
    w = weight.float().clone(memory_format=torch.contiguous_format)
    hessian = gram.to(w.device, torch.float32) * (2.0 / max(n_tokens, 1))
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1.0
    w[:, dead] = 0.0
    hinv = _upper_cholesky_of_inverse(hessian, damping)
    mask = torch.ones_like(w, dtype=torch.bool)

    for start in range(0, in_features, block_size):
        end = min(start + block_size, in_features)
        w_block = w[:, start:end].clone()
        hinv_block = hinv[start:end, start:end]
        errors = torch.zeros_like(w_block)
        diagonal = hinv_block.diagonal()
        if nm is None:
            saliency = w_block.square() / diagonal.square().unsqueeze(0)
            n_pruned = round(sparsity * saliency.numel())
            block_mask = torch.ones_like(w_block, dtype=torch.bool)
            if n_pruned:
                lowest = torch.topk(saliency.reshape(-1), n_pruned, largest=False).indices
                block_mask.view(-1)[lowest] = False
        else:
            block_mask = torch.ones_like(w_block, dtype=torch.bool)
        for column in range(end - start):
            if nm is not None and column % nm[1] == 0:
                group = w_block[:, column : column + nm[1]].square()
                group = group / diagonal[column : column + nm[1]].square().unsqueeze(0)
                lowest = torch.topk(group, nm[1] - nm[0], dim=1, largest=False).indices
                block_mask[:, column : column + nm[1]].scatter_(1, lowest, False)
            q = w_block[:, column] * block_mask[:, column]
            error = (w_block[:, column] - q) / diagonal[column]
            w_block[:, column:] -= error.unsqueeze(1) * hinv_block[column, column:].unsqueeze(0)
            w_block[:, column] = q
            errors[:, column] = error
        w[:, start:end] = w_block
        mask[:, start:end] = block_mask
        w[:, end:] -= errors @ hinv[start:end, end:]
    w[~mask] = 0.0
    weight.copy_(w.to(weight.dtype))
    return mask
