"""Selection operators that survive pickling (checkpoints pickle the whole algorithm)."""

from __future__ import annotations

from pymoo.algorithms.soo.nonconvex.ga import comp_by_cv_and_fitness
from pymoo.operators.selection.tournament import TournamentSelection


def compare_by_cv_then_fitness(pop, P, random_state=None, **kwargs):
    """pymoo's GA tournament comparison, reached through a module-level function.

    pymoo 0.6.2 wraps ``comp_by_cv_and_fitness`` in a decorator closure that ``pickle`` cannot
    find by name, so a default ``GA`` cannot be checkpointed; this delegate can.
    """
    return comp_by_cv_and_fitness(pop, P, random_state=random_state, **kwargs)


def ga_tournament_selection() -> TournamentSelection:
    """The selection pymoo's ``GA`` uses by default (binary tournament), in picklable form."""
    return TournamentSelection(func_comp=compare_by_cv_then_fitness)
