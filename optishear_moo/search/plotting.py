"""Pareto-front plots with matplotlib (PNG + SVG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

LABELS = {"kl": "KL divergence to dense", "output_error": "final hidden-state error (rel.)",
          "reconstruction": "layer reconstruction error (rel.)", "density": "weights kept (share)",
          "ppl": "WikiText-2 perplexity", "blocks_kept": "decoder blocks kept",
          "kept_share": "block weights kept (share)",
          "zero_shot_accuracy": "average zero-shot accuracy (higher is better)"}


def plot_pareto(
    F: np.ndarray,
    objectives: Sequence[str],
    path: str | Path | None = None,
    x: int = 0,
    y: int = 1,
    baselines: Mapping[str, Sequence[float]] | None = None,
    history: np.ndarray | None = None,
    title: str | None = None,
):
    """Scatter the front ``F`` (``(n_points, n_obj)``) on objectives ``x`` and ``y``.

    ``baselines`` maps a label to a point (one value per objective), or to a list of points (a
    baseline at several sizes, drawn as a line), each in a colour of its own and hollow so that
    points on top of each other stay visible; ``history`` (all evaluated F) is drawn faintly
    underneath. With ``path``, saves ``path.png`` and ``path.svg`` (any suffix of ``path`` is
    replaced) and closes the figure; without, returns it (for notebooks). ``F`` may also be a
    pymoo ``Result`` (its ``F`` is used).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    F = np.asarray(getattr(F, "F", F), dtype=float)
    F = F.reshape(len(F), -1) if F.ndim == 1 and len(objectives) > 1 else np.atleast_2d(F)
    if F.shape[1] < 2:
        raise ValueError("a Pareto plot needs at least two objectives")
    import textwrap

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if history is not None and len(history):
        history = np.asarray(history, dtype=float).reshape(len(history), -1)
        ax.scatter(history[:, x], history[:, y], s=8, color="0.8", label="evaluated", zorder=1)
    order = np.argsort(F[:, x])
    ax.plot(F[order, x], F[order, y], "o-", color="tab:blue", label="Pareto front", zorder=3)
    colours = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
               "tab:cyan", "tab:gray"]
    for k, (label, points) in enumerate((baselines or {}).items()):
        points = np.asarray(points, dtype=float).reshape(-1, F.shape[1])
        ax.plot(points[:, x], points[:, y], marker="s^vDP*X<>"[k % 9], markersize=9,
                linestyle="--" if len(points) > 1 else "none", color=colours[k % len(colours)],
                markerfacecolor="none", markeredgewidth=1.5, label=label, zorder=4)
    ax.set_xlabel(LABELS.get(objectives[x], objectives[x]))
    ax.set_ylabel(LABELS.get(objectives[y], objectives[y]))
    if title:
        ax.set_title(textwrap.fill(title, 60), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is None:
        return fig
    stem = Path(path).with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".svg"):
        fig.savefig(stem.with_suffix(suffix), dpi=120)
    plt.close(fig)
    return None
