"""Evaluation of pruned models."""

from .perplexity import PerplexityResult, eval_segments, perplexity

__all__ = ["PerplexityResult", "eval_segments", "perplexity"]
