"""Shared settings and fixtures of the command-line tests."""

import json

import pytest

from optishear_moo.cli import main

FAST = ["--n-samples", "4", "--seq-len", "32", "--eval-seq-len", "32", "--eval-segments", "2",
        "--device", "cpu", "--quiet"]
PRUNE_WINDOWS = ["--prune-samples", "4", "--prune-seq-len", "32"]  # search and levels prune from these
SEARCH = ["--pop", "1", "--offspring", "3", "--gens", "2", *FAST]


def darwinlm(model_dir, output, *extra):
    """``optishear-moo darwinlm`` on ``model_dir`` with a tiny budget."""
    return main(["darwinlm", "--model", str(model_dir), "--output", str(output), *SEARCH, *extra])


def evaluations(directory):
    """The evaluations (not the stage scores) of a search's ``evaluations.jsonl``."""
    records = [json.loads(line) for line in (directory / "evaluations.jsonl").read_text().splitlines()]
    return [record for record in records if "F" in record]


@pytest.fixture
def sliced_dir(tiny_model_dir, tmp_path):
    output = tmp_path / "sliced"
    assert darwinlm(tiny_model_dir, output, "--compression", "1.5", "--selection", "one-shot",
                    "--gens", "1") == 0
    return output / "model"
