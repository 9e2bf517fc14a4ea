"""pymoo problems and operators."""

from .encoding import LAYERWISE, BalancedSparsityRepair, SearchSpace
from .optishear import OptiShearProblem

__all__ = ["LAYERWISE", "BalancedSparsityRepair", "OptiShearProblem", "SearchSpace"]
