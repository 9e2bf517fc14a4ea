"""The settings of an EvoP block-removal search, checked when made (before any model loads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import SettingError, at_least, param
from .fitness import check_block_objective
from .problem import check_block_algorithm

BLOCK_METHODS = ("evop", "shortgpt", "sleb", "last")
WARM_STARTS = ("last", "shortgpt", "sleb")


@dataclass(frozen=True)
class EvoPConfig:
    """How :func:`~optishear_moo.evop.search_evop` chooses the decoder blocks to remove.

    Args:
        n_remove: Blocks to remove, or ``(low, high)`` for a size-vs-quality front (``evop`` only;
            the largest removal is chosen).
        method: ``evop`` (the evolutionary search, warm-started with the ``warm_start``
            heuristics' choices), or a heuristic: ``shortgpt`` (lowest block influence), ``sleb``
            (greedy removal by calibration perplexity), ``last`` (the blocks before the final one).
        objective: The search's fitness: ``kl`` to the dense model, or calibration ``ppl``.
        pop_size: Population size (``evop``).
        n_gen: Generations (``evop``).
        n_evals: A budget in scored candidates instead of ``n_gen`` (``evop``; with ``n_stages``
            above 1, in passes over the calibration windows, see there): the search stops
            after the generation in which its own count reaches it (the first population
            included; offspring pymoo drops as duplicates are not scored and do not count), so it
            scores at least this many, and fewer than ``pop_size`` more (or its first population,
            if that is larger). ``None``: ``n_gen`` generations. What a comparison at equal
            evaluations needs: a generation budget falls short of ``n_gen × pop_size`` by the
            duplicates.
        batch_size: Calibration windows per forward pass.
        algorithm: ``ga`` (EvoP's genetic algorithm; NSGA-II for a count range) or ``1+lambda``
            (EvoPress's: the best so far is the only parent of ``pop_size`` offspring per
            generation, each a few block swaps away; one ``n_remove`` only).
        warm_start: The heuristics whose choices join ``evop``'s first population (any of
            ``last``, ``shortgpt``, ``sleb``): the search, elitist, then never ends worse on its
            objective than they do. ``sleb`` costs its greedy evaluations (about ``n_remove ×``
            blocks), counted in the result's ``n_evaluations``.
        n_stages: EvoPress's multi-fidelity selection for ``1+lambda`` (1: none): the
            ``pop_size`` offspring are scored on a share of the calibration windows, and in each
            of ``n_stages`` stages the survivors halve while the windows scored double, the last
            stage (all windows) holding the parent too (e.g. 3 stages, 8 windows, 16 offspring:
            16 on 2 windows, the best 4 on 4, the best 2 and the parent on 8; 8 passes per
            generation instead of 16). A candidate scored on a share of the windows counts that
            share of a pass, in ``n_evals`` and in the result's ``n_evaluations`` (rounded up).
    """

    n_remove: int | tuple[int, int] = 6
    method: str = "evop"
    objective: str = "kl"
    pop_size: int = 16
    n_gen: int = 10
    n_evals: int | None = None
    batch_size: int = 8
    warm_start: tuple[str, ...] = ("last", "shortgpt")
    algorithm: str = "ga"
    n_stages: int = 1

    def __post_init__(self):
        if self.method not in BLOCK_METHODS:
            raise SettingError(f"{param('method')} {self.method!r} is not a block-removal method: choose one "
                               f"of {', '.join(BLOCK_METHODS)}")
        counts = self.n_remove if isinstance(self.n_remove, (tuple, list)) else (self.n_remove,)
        if isinstance(self.n_remove, (tuple, list)):
            integers = all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
            if len(counts) != 2 or not integers or not counts[0] < counts[1]:
                raise SettingError(f"an {param('n_remove')} range (low, high) needs integers low < high, got "
                                   f"{self.n_remove!r}")
            if self.method != "evop":
                raise SettingError(f"an {param('n_remove')} range needs {param('method')} evop (the "
                                   "heuristics remove a fixed count)")
            object.__setattr__(self, "n_remove", tuple(counts))
            if self.algorithm == "1+lambda":
                raise SettingError(f"an {param('n_remove')} range needs {param('algorithm')} ga (a (1 + λ) "
                                   "search keeps one candidate, not a front)")
        for count in counts:
            at_least("n_remove", count, 0)
        check_block_objective(self.objective)
        check_block_algorithm(self.algorithm)
        starts = (self.warm_start.split(",") if isinstance(self.warm_start, str) else list(self.warm_start))
        starts = [start.strip() for start in starts if start.strip()]
        unknown = [start for start in starts if start not in WARM_STARTS]
        if unknown:
            raise SettingError(f"{param('warm_start')} {unknown[0]!r} is not a heuristic to start from: "
                               f"use any of {', '.join(WARM_STARTS)}")
        object.__setattr__(self, "warm_start", tuple(dict.fromkeys(starts)))
        at_least("pop_size", self.pop_size, 2)
        at_least("n_gen", self.n_gen, 1)
        if self.n_evals is not None:
            at_least("n_evals", self.n_evals, 1)
            if self.method != "evop":
                raise SettingError(f"{param('n_evals')} budgets {param('method')} evop's search; "
                                   f"{self.method} spends a fixed count: drop {param('n_evals')}")
        at_least("batch_size", self.batch_size, 1)
        at_least("n_stages", self.n_stages, 1)
        if self.n_stages > 1 and (self.method != "evop" or self.algorithm != "1+lambda"):
            raise SettingError(f"{param('n_stages')} {self.n_stages} (multi-fidelity selection) needs "
                               f"{param('method')} evop with {param('algorithm')} 1+lambda; or drop it")

    def check_model(self, model_config) -> None:
        """Every count leaves at least one of the model's blocks (read from its config)."""
        n_blocks = model_config.num_hidden_layers
        for count in self.n_remove if isinstance(self.n_remove, tuple) else (self.n_remove,):
            if count >= n_blocks:
                raise SettingError(f"{param('n_remove')} must be an integer in [0, {n_blocks}) for a model "
                                   f"of {n_blocks} blocks, got {count}")

    @property
    def multi_objective(self) -> bool:
        return isinstance(self.n_remove, tuple)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["n_remove"] = list(self.n_remove) if self.multi_objective else self.n_remove
        values["warm_start"] = list(self.warm_start)
        if self.n_stages == 1:  # as before the setting existed: checkpoints of such runs still resume
            del values["n_stages"]
        return values
