"""Where the modules and names of optishear-moo 0.1's flat layout went (one package per method).

Old imports keep working with a ``FutureWarning`` that names the new home:
``optishear_moo.block_search`` is an alias of ``optishear_moo.evop.search``, and names that left a
package that still exists (``optishear_moo.pruning.MetaMetric``) resolve through its module
``__getattr__``. Checkpoints written before the move name the old modules; the checkpoint
reader maps them with :data:`MOVED_MODULES` too.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

MOVED_MODULES = {
    "optishear_moo.fitness": "optishear_moo.optishear.fitness",
    "optishear_moo.plan": "optishear_moo.optishear.plan",
    "optishear_moo.plotting": "optishear_moo.search.plotting",
    "optishear_moo.problems.optishear": "optishear_moo.optishear.problem",
    "optishear_moo.problems.encoding": "optishear_moo.optishear.encoding",
    "optishear_moo.problems.block_removal": "optishear_moo.evop.problem",
    "optishear_moo.problems.structured": "optishear_moo.darwinlm.problem",
    "optishear_moo.problems.selection": "optishear_moo.search.selection",
    "optishear_moo.pruning.meta_metric": "optishear_moo.optishear.meta_metric",
    "optishear_moo.pruning.blocks": "optishear_moo.evop.blocks",
    "optishear_moo.block_fitness": "optishear_moo.evop.fitness",
    "optishear_moo.block_search": "optishear_moo.evop.search",
    "optishear_moo.structured_fitness": "optishear_moo.darwinlm.fitness",
    "optishear_moo.structured_search": "optishear_moo.darwinlm.search",
}
"""Old module -> new module, for modules that moved whole."""

MOVED_NAMES = {
    "optishear_moo.problems": {
        "OptiShearProblem": "optishear_moo.optishear", "SearchSpace": "optishear_moo.optishear",
        "LAYERWISE": "optishear_moo.optishear", "BalancedSparsityRepair": "optishear_moo.optishear",
        "BlockRemovalProblem": "optishear_moo.evop", "block_removal_algorithm": "optishear_moo.evop",
        "StructuredPruningProblem": "optishear_moo.darwinlm", "SelectionStage": "optishear_moo.darwinlm",
        "darwinlm_algorithm": "optishear_moo.darwinlm",
    },
    "optishear_moo.pruning.structured": {
        **dict.fromkeys(("LevelDatabase", "LevelEntry", "kept_parameters", "check_levels", "removal_path",
                         "default_mlp_levels"), "optishear_moo.darwinlm.database"),
        "apply_levels_": "optishear_moo.darwinlm.slicing",
        **dict.fromkeys(("UNITS", "STRUCTURED_MODEL_TYPES", "BlockLayout", "block_layout",
                         "check_structured_model"), "optishear_moo.models.sliced"),
    },
    "optishear_moo.pruning": dict.fromkeys(("MetaMetric", "metric_masks"), "optishear_moo.optishear"),
    "optishear_moo.search": {"write_search_outputs": None,  # replaced by OptiShearResult.save
                             "SafeUnpickler": None},  # replaced by search.safe_pickle.DataUnpickler
    "optishear_moo": {
        **dict.fromkeys(("InputStatistics", "collect_input_statistics", "sequential_blocks"),
                        "optishear_moo.activations"),
        **dict.fromkeys(("DenseSnapshot", "PruningConfig", "PruningResult", "masks_applied",
                         "sparsity_report"), "optishear_moo.pruning"),
        **dict.fromkeys(("DEFAULT_MODEL", "get_adapter", "load_tokenizer"), "optishear_moo.models"),
        "load_corpus": "optishear_moo.data", "PerplexityResult": "optishear_moo.evaluation",
        "MetaMetric": "optishear_moo.optishear",
    },
}
"""Package -> {name: its new module (None: removed)}, for names that left a package."""


_REPLACEMENTS = {
    "write_search_outputs": "use optishear_moo.optishear.OptiShearResult.save",
    "SafeUnpickler": "checkpoints are read by optishear_moo.search.load_checkpoint "
                     "(optishear_moo.search.DataUnpickler)",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; import it from there", FutureWarning, stacklevel=3)


def moved_attribute(package: str, name: str):
    """The moved ``name`` of ``package`` from its new home (``AttributeError`` if it never was)."""
    home = MOVED_NAMES.get(package, {}).get(name, ...)
    if home is ...:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    if home is None:  # ImportError, so that ``from package import name`` shows this message
        raise ImportError(f"{package}.{name} was removed: {_REPLACEMENTS[name]}")
    _warn(f"{package}.{name}", f"{home}.{name}")
    return getattr(importlib.import_module(home), name)


class _Alias(importlib.abc.Loader):
    """Loads an old module name as a thin module forwarding every attribute to its new home."""

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        new = MOVED_MODULES.get(spec.name)
        if new is not None:
            _warn(spec.name, new)
            target = importlib.import_module(new)
            module.__getattr__ = lambda name: getattr(target, name)
        else:  # a package that was split: names resolve one by one
            module.__getattr__ = lambda name: moved_attribute(spec.name, name)
            module.__path__ = []
        return module

    def exec_module(self, module):
        pass


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        # asked only for names no real module has: this finder comes last on sys.meta_path
        if fullname in MOVED_MODULES or fullname in MOVED_NAMES:
            package = fullname not in MOVED_MODULES
            return importlib.machinery.ModuleSpec(fullname, _Alias(), is_package=package)
        return None


def install() -> None:
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
