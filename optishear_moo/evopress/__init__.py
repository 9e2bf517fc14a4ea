"""EvoPress (IST-DASLab): per-layer sparsity levels searched over a database of pruned weights
(SparseGPT or Wanda, chosen per model), with level-switch mutation and multi-fidelity selection;
:func:`search_evopress` runs the whole pipeline."""

from .config import EvoPressConfig
from .database import SparsityLevelDatabase, sparsity_ladder
from .problem import LevelSearchProblem
from .search import EvoPressResult, choose_level_method, compare_weights, search_evopress

__all__ = ["EvoPressConfig", "EvoPressResult", "LevelSearchProblem", "SparsityLevelDatabase",
           "choose_level_method", "compare_weights", "search_evopress", "sparsity_ladder"]
