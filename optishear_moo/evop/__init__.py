"""EvoP (arXiv 2502.14910): which decoder blocks to remove, searched with pymoo on a
prefix-cached evaluator, plus the ShortGPT / SLEB / last-block baselines."""

from .blocks import block_influence, last_blocks, least_influential, remove_blocks_, shortgpt_blocks
from .fitness import BlockRemovalEvaluator, greedy_removal_order
from .problem import BlockRemovalProblem, block_removal_algorithm
from .search import BLOCK_METHODS, BlockChoice, choose_blocks

__all__ = ["BLOCK_METHODS", "BlockChoice", "BlockRemovalEvaluator", "BlockRemovalProblem",
           "block_influence", "block_removal_algorithm", "choose_blocks", "greedy_removal_order",
           "last_blocks", "least_influential", "remove_blocks_", "shortgpt_blocks"]
