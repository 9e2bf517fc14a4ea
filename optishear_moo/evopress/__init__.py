"""EvoPress (IST-DASLab): per-layer sparsity levels searched over a database of pruned weights
(SparseGPT by default), with level-switch mutation and multi-fidelity selection."""

from .database import SparsityLevelDatabase, sparsity_ladder
from .problem import LevelSearchProblem
from .search import LevelChoice, apply_better_, choose_level_method, search_levels

__all__ = ["LevelChoice", "LevelSearchProblem", "SparsityLevelDatabase", "apply_better_",
           "choose_level_method", "search_levels", "sparsity_ladder"]
