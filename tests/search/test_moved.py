"""Names and checkpoints of the 0.1 layout keep working after the move to one package per method."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from optishear_moo import BlockRemovalProblem, OptiShearProblem
from optishear_moo.search import run_search
from tests.conftest import VOCAB, make_tiny_model

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("old, new, name", [
    ("optishear_moo.block_search", "optishear_moo.evop.search", "choose_blocks"),
    ("optishear_moo.problems.structured", "optishear_moo.darwinlm.problem", "StructuredPruningProblem"),
    ("optishear_moo.problems", "optishear_moo.optishear", "OptiShearProblem"),
    ("optishear_moo.pruning.structured", "optishear_moo.darwinlm.slicing", "apply_levels_"),
    ("optishear_moo.pruning", "optishear_moo.optishear", "MetaMetric"),
    ("optishear_moo", "optishear_moo.pruning", "DenseSnapshot"),
])
def test_old_imports_work_and_name_the_new_home(old, new, name):
    import importlib

    with pytest.warns(FutureWarning, match=rf"moved to {new}"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)


def test_removed_and_unknown_names_fail_clearly():
    with pytest.raises(ImportError, match="OptiShearResult.save"):
        from optishear_moo.search import write_search_outputs  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import optishear_moo

        optishear_moo.nothing  # noqa: B018


@pytest.mark.parametrize("name", ["optishear-0.1-checkpoint", "evop-0.1-checkpoint"])
def test_checkpoints_of_0_1_are_refused_with_a_message_naming_the_version(name, tmp_path):
    # written by optishear-moo 0.1.0 (one generation of a population of 4, seed 3) on this data;
    # 0.2 problems declare their constraints differently, so these cannot continue
    calibration = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    if name.startswith("optishear"):
        problem = OptiShearProblem(make_tiny_model("llama"), calibration, 0.5, batch_size=2,
                                   reconstruction_tokens=16)
    else:
        problem = BlockRemovalProblem(make_tiny_model("llama"), calibration, 1)
    directory = tmp_path / name
    shutil.copytree(DATA / name, directory)
    saved = json.loads((directory / "state.json").read_text())
    assert saved["generation"] == 1 and saved["format"] == "optishear-moo/checkpoint-v1"
    with pytest.raises(ValueError, match="without a signature.*--trust-checkpoint"):
        run_search(problem, None, ("n_gen", 2), checkpoint_dir=directory, resume=True)
    with pytest.raises(ValueError, match="optishear-moo 0.1.*start a new search"):
        run_search(problem, None, ("n_gen", 2), checkpoint_dir=directory, resume=True, trust=True)
    assert sorted(p.name for p in directory.iterdir()) == ["algorithm.pkl", "evaluations.jsonl", "state.json"]
