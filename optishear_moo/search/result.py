"""What every method's result offers: the front, applying a point of it, a report, and files.

Each driver returns a result of its method (``OptiShearResult``, ``EvoPressResult``,
``EvoPResult``, ``DarwinLMResult``); all of them are :class:`SearchResult`:

* ``front``: one dict per Pareto point (best quality first), each with its objective values, its
  size (``size_name``: ``density``, ``blocks_kept`` or ``kept_share``) and what ``apply`` needs;
  a search with one size target has one point, the chosen one.
* ``apply(model, point=None)``: prune a dense ``model`` **in place** to the chosen point, or to
  ``front[point]`` (an index) or a point dict; returns the model.
* ``report()``: everything as JSON-able values; ``save(directory)`` writes ``front.json`` and the
  Pareto plot(s).
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
from torch import nn

from ..outputs import make_directory, write_atomically


class SearchResult:
    """Base of the methods' results (see the module docstring)."""

    structural: ClassVar[bool] = False
    """Whether ``apply`` changes the model's structure (removes blocks, slices units)."""
    size_name: ClassVar[str] = "density"
    quality_name: ClassVar[str] = "kl"
    title: ClassVar[str] = "search"
    front: list[dict]

    def apply(self, model: nn.Module, point=None) -> nn.Module:
        raise NotImplementedError

    def report(self) -> dict:
        raise NotImplementedError

    def description(self, point=None) -> dict:
        """What a model pruned to ``point`` holds, for its ``config.json`` (see
        :func:`~optishear_moo.models.save_model`)."""
        raise NotImplementedError

    def point(self, point=None) -> dict:
        """The chosen point (None), ``front[point]`` (an index) or ``point`` itself (a dict)."""
        if point is None:
            return self.chosen_point()
        if isinstance(point, dict):
            return point
        if not isinstance(point, (int, np.integer)) or not -len(self.front) <= point < len(self.front):
            raise ValueError(f"point must index the front's {len(self.front)} points, got {point!r}")
        return self.front[int(point)]

    def chosen_point(self) -> dict:
        return self.front[0]

    def density_of(self, point: dict) -> float:
        """The share of weights a point keeps (its ``size_name`` field, a share)."""
        return float(point[self.size_name])

    def baseline_points(self) -> dict[str, dict]:
        """Points of fixed recipes to compare the front with (label -> point); none by default."""
        return {}

    def plot_axes(self) -> list[str]:
        """The two point fields the Pareto plot draws: quality against size by default."""
        return [self.quality_name, self.size_name]

    def baseline_curves(self) -> dict[str, list]:
        """Label -> points (``plot_axes`` values) of each baseline, for the Pareto plot."""
        axes = self.plot_axes()
        return {label: [[point[axis] for axis in axes]] for label, point in self.baseline_points().items()
                if all(axis in point for axis in axes)}

    @contextlib.contextmanager
    def pruned(self, model: nn.Module, point=None):
        """``model`` pruned to ``point`` for the duration of the block, then dense again (a copy
        is pruned when the method changes the model's structure)."""
        if self.structural:
            yield self.apply(copy.deepcopy(model), point)
            return
        from ..pruning.weights import DenseSnapshot

        snapshot = DenseSnapshot.of(model)
        try:
            yield self.apply(model, point)
        finally:
            snapshot.restore()

    def save(self, directory: str | Path, title: str | None = None, history=None) -> None:
        """``front.json``, and with two or more points (or baselines to compare with)
        ``pareto.png``/``.svg`` (``plot_axes``: quality against size by default, baselines drawn
        in) and, once the front was scored on zero-shot tasks, ``pareto_zero_shot.png``/``.svg``."""
        from .plotting import plot_pareto

        directory = make_directory(directory)
        write_atomically(directory / "front.json", json.dumps(self.front, indent=2))
        title = title or self.title
        axes = self.plot_axes()
        if len(axes) < 2 or (len(self.front) < 2 and not self.baseline_curves()):
            return
        plot_pareto([[p[axis] for axis in axes] for p in self.front], axes, directory / "pareto",
                    baselines=self.baseline_curves(), history=history, title=title)
        scored = [p for p in self.front if "zero_shot" in p]
        if scored:
            reference = {label: [p[self.size_name], p["zero_shot"]["average"]["acc"]]
                         for label, p in self.baseline_points().items() if "zero_shot" in p}
            plot_pareto([[p[self.size_name], p["zero_shot"]["average"]["acc"]] for p in scored],
                        [self.size_name, "zero_shot_accuracy"], directory / "pareto_zero_shot",
                        baselines=reference, title=f"{title}: average 0-shot accuracy")


def unique_points(points: list[dict], key: str) -> list[dict]:
    """``points`` without repeats of the same ``point[key]`` (the first kept): several decision
    vectors can decode to one candidate (rounded or floor-coded genes)."""
    seen, unique = set(), []
    for point in points:
        marker = json.dumps(point[key], sort_keys=True)
        if marker not in seen:
            seen.add(marker)
            unique.append(point)
    return unique


def zero_shot_front(result: SearchResult, model: nn.Module, tokenizer, tasks, limit: int | None = None,
                    batch_size: int = 8, progress: bool = False) -> None:
    """Score every front point, and the result's baselines, on zero-shot ``tasks``
    (lm-evaluation-harness): each point gets ``"zero_shot"`` (see
    :func:`~optishear_moo.evaluation.zero_shot.zero_shot`). ``model`` is the dense model the
    search ran on; it is left dense."""
    from tqdm.auto import tqdm

    from ..evaluation.zero_shot import zero_shot

    points = [*result.front, *result.baseline_points().values()]
    for point in tqdm(points, desc="zero-shot front", disable=not progress):
        with result.pruned(model, point) as pruned:
            point["zero_shot"] = zero_shot(pruned, tokenizer, tasks, limit, batch_size)
