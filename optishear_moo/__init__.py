"""optishear-moo: evolutionary multi-objective pruning of LLMs as a native pymoo plugin.

Four methods, each a pymoo problem, a frozen config and one driver that runs its whole pipeline,
``search_<method>(model, calibration, config, run=None) -> <Method>Result``: OptiShear (searched
pruning metric, layerwise sparsity and weight update), EvoPress (per-layer sparsity levels over a
SparseGPT or Wanda database), EvoP (which blocks to remove) and DarwinLM (training-aware
structured pruning). Everything else is importable from its subpackage
(``optishear_moo.pruning``, ``optishear_moo.search``, ``optishear_moo.evaluation``...).

Names are imported on first use, so ``import optishear_moo`` (and the command line's ``--help``)
stays fast.
"""

from __future__ import annotations

import importlib

from ._version import __version__  # noqa: F401 - one source for the package, checkpoints and reports

_HOMES = {
    # problems
    "OptiShearProblem": "optishear", "LevelSearchProblem": "evopress",
    "BlockRemovalProblem": "evop", "StructuredPruningProblem": "darwinlm",
    # configs
    "OptiShearConfig": "optishear", "EvoPressConfig": "evopress", "EvoPConfig": "evop",
    "DarwinLMConfig": "darwinlm", "PruningConfig": "pruning", "CalibrationConfig": "data",
    "SearchRun": "search",
    # drivers
    "search_optishear": "optishear", "search_evopress": "evopress", "search_evop": "evop",
    "search_darwinlm": "darwinlm", "prune_model": "pruning", "run_search": "search",
    # results
    "OptiShearResult": "optishear", "EvoPressResult": "evopress", "EvoPResult": "evop",
    "DarwinLMResult": "darwinlm", "PruningPlan": "optishear", "PruningResult": "pruning",
    # loaders
    "load_model": "models", "load_calibration": "data", "CalibrationSet": "data",
    # plotting
    "plot_pareto": "search",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'optishear_moo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
