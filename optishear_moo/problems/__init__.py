"""pymoo problems and operators."""

from .block_removal import BlockRemovalProblem, block_removal_algorithm
from .encoding import LAYERWISE, BalancedSparsityRepair, SearchSpace
from .optishear import OptiShearProblem
from .structured import SelectionStage, StructuredPruningProblem, darwinlm_algorithm

__all__ = ["LAYERWISE", "BalancedSparsityRepair", "BlockRemovalProblem", "OptiShearProblem",
           "SearchSpace", "SelectionStage", "StructuredPruningProblem", "block_removal_algorithm",
           "darwinlm_algorithm"]
