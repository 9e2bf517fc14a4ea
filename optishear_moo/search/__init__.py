"""Method-agnostic search machinery over pymoo: checkpointed runs, the algorithm factory,
fidelity schedules and Pareto plots."""

from .algorithms import (
    MULTI_OBJECTIVE_ALGORITHMS,
    SINGLE_OBJECTIVE_ALGORITHMS,
    check_algorithm,
    make_algorithm,
)
from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, load_state, save_checkpoint
from .fidelity import FidelitySchedule, reevaluate_at_full_fidelity
from .plotting import plot_pareto
from .runner import front_arrays, generations_reached, run_search, termination_from_tuple
from .safe_pickle import DataUnpickler

__all__ = ["CHECKPOINT_FORMAT", "MULTI_OBJECTIVE_ALGORITHMS", "SINGLE_OBJECTIVE_ALGORITHMS",
           "CheckpointError", "DataUnpickler", "FidelitySchedule", "check_algorithm", "front_arrays",
           "generations_reached", "load_checkpoint", "load_state", "make_algorithm", "plot_pareto",
           "reevaluate_at_full_fidelity", "run_search", "save_checkpoint", "termination_from_tuple"]


def __getattr__(name):  # names that moved to a method package
    from .._moved import moved_attribute

    return moved_attribute(__name__, name)
