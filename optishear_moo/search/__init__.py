"""Method-agnostic search machinery over pymoo: how a search runs (:class:`SearchRun`),
checkpointed runs that resume by replaying their evaluation log, the algorithm factory, staged
selection, fidelity schedules, results and Pareto plots."""

from .algorithms import (
    MULTI_OBJECTIVE_ALGORITHMS,
    SINGLE_OBJECTIVE_ALGORITHMS,
    check_algorithm,
    make_algorithm,
)
from .checkpoint import CHECKPOINT_FORMAT, Checkpoint, CheckpointError, EvaluationLog, read_state
from .fidelity import FidelitySchedule, reevaluate_at_full_fidelity
from .levels import SelectionStage, StagedSurvival, halving_stages
from .plotting import plot_pareto
from .result import SearchResult, unique_points, zero_shot_front
from .run import SearchRun
from .runner import budget, front_arrays, run_search

__all__ = ["CHECKPOINT_FORMAT", "MULTI_OBJECTIVE_ALGORITHMS", "SINGLE_OBJECTIVE_ALGORITHMS", "Checkpoint",
           "CheckpointError", "EvaluationLog", "FidelitySchedule", "SearchResult", "SearchRun",
           "SelectionStage", "StagedSurvival", "budget", "check_algorithm", "front_arrays",
           "halving_stages", "make_algorithm", "plot_pareto", "read_state", "reevaluate_at_full_fidelity",
           "run_search", "unique_points", "zero_shot_front"]
