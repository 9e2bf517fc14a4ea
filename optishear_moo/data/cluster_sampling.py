"""Cluster-based calibration sampling (EvoP's CCDS) and calibration diversity.

A pool of candidate windows is cut from the source text, each window is embedded, the
embeddings are clustered with scikit-learn's k-means, and the calibration set is drawn evenly
across the clusters so that it covers the variety of the text instead of a random share of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.spatial.distance import pdist
from tqdm.auto import tqdm

from ..errors import SettingError, param
from ..models.placement import weights_device

Embedder = Callable[[torch.Tensor], np.ndarray]
"""Maps ``(n_windows, seq_len)`` int64 token ids to ``(n_windows, dim)`` float embeddings."""


def hidden_state_embedder(model, batch_size: int = 8, progress: bool = False) -> Embedder:
    """The default embedder: mean-pooled last hidden states of ``model`` (the model being pruned).

    Runs the model's base transformer only (no LM head), in ``torch.no_grad``, on the model's
    device; returns float32 numpy arrays.
    """
    base = getattr(model, "base_model", model)
    device = weights_device(model)  # (a model streamed from disk has its parameters on meta)

    @torch.no_grad()
    def embed(windows: torch.Tensor) -> np.ndarray:
        parts = []
        for batch in tqdm(torch.split(windows, batch_size), desc="embedding windows",
                          disable=not progress, leave=False):
            hidden = base(input_ids=batch.to(device), use_cache=False).last_hidden_state
            parts.append(hidden.float().mean(dim=1).cpu())
        return torch.cat(parts).numpy()

    return embed


def candidate_windows(tokens: torch.Tensor, seq_len: int, pool_size: int, seed: int) -> torch.Tensor:
    """Up to ``pool_size`` non-overlapping windows of the text, chosen with ``seed``.

    Returns ``(n, seq_len)`` int64 with ``n = min(pool_size, tokens // seq_len)``, in text order.
    """
    n_windows = tokens.numel() // seq_len
    if n_windows < 1:
        raise SettingError(f"the calibration text has only {tokens.numel()} tokens, fewer than "
                           f"{param('seq_len')}={seq_len}: use a longer text or a shorter {param('seq_len')}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n_windows, size=min(pool_size, n_windows), replace=False))
    return tokens[: n_windows * seq_len].view(n_windows, seq_len)[torch.as_tensor(chosen)]


def cluster_embeddings(embeddings: np.ndarray, n_clusters: int, seed: int):
    """A fitted :class:`sklearn.cluster.KMeans` on L2-normalised embeddings."""
    from sklearn.cluster import KMeans

    if not 1 <= n_clusters <= len(embeddings):
        raise ValueError(f"n_clusters must be between 1 and the number of candidate windows "
                         f"({len(embeddings)}), got {n_clusters}")
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(_normalised(embeddings))


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if not np.isfinite(embeddings).all():
        raise ValueError("the embedder returned NaN or infinite values")
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def draw_across_clusters(labels: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    """Indices of ``n_samples`` items spread as evenly as possible over the cluster ``labels``.

    Each cluster gets ``n_samples // K`` items, the remainder goes to randomly chosen clusters;
    a cluster with too few items gives all it has and the shortfall moves to the others.
    """
    if n_samples > len(labels):
        raise ValueError(f"cannot draw {n_samples} windows from a pool of {len(labels)}: "
                         "raise the pool size or lower n_samples")
    rng = np.random.default_rng(seed)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    taken = [0] * len(members)
    remaining = n_samples
    while remaining:
        open_clusters = [c for c, m in enumerate(members) if taken[c] < len(m)]
        share, extra = divmod(remaining, len(open_clusters))
        bonus = set(rng.choice(open_clusters, size=extra, replace=False).tolist())
        for c in open_clusters:
            give = min(share + (c in bonus), len(members[c]) - taken[c])
            taken[c] += give
            remaining -= give
    return np.sort(np.concatenate([m[:t] for m, t in zip(members, taken)]))


@dataclass(frozen=True)
class DiversityReport:
    """How varied a calibration set is.

    ``mean_pairwise_distance``: mean cosine distance between the windows' embeddings (0 when all
    are alike). ``cluster_coverage``: share of the ``n_clusters`` reference clusters (k-means on
    the candidate pool) holding at least one calibration window.
    """

    n_samples: int
    mean_pairwise_distance: float
    cluster_coverage: float
    n_clusters: int

    def to_dict(self) -> dict:
        return asdict(self)


def diversity_of(embeddings: np.ndarray, reference) -> DiversityReport:
    """:class:`DiversityReport` of calibration ``embeddings`` against a fitted k-means ``reference``."""
    embeddings = _normalised(embeddings)
    distance = float(pdist(embeddings, metric="cosine").mean()) if len(embeddings) > 1 else 0.0
    hit = np.unique(reference.predict(embeddings))
    return DiversityReport(len(embeddings), distance, len(hit) / reference.n_clusters,
                           reference.n_clusters)
