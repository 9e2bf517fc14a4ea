import json

import numpy as np
import pytest
from pymoo.algorithms.moo.nsga2 import NSGA2

from optishear_moo.search import load_checkpoint, run_search
from tests.cli.conftest import evaluations
from tests.conftest import InterruptAt


def test_resume_after_an_interruption_equals_an_uninterrupted_run(problem, tmp_path):
    straight = run_search(problem, NSGA2(pop_size=4), ("n_gen", 4), seed=2,
                          checkpoint_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):  # dies while generation 3 is under way
        run_search(problem, NSGA2(pop_size=4), ("n_gen", 4), seed=2, checkpoint_dir=tmp_path / "b",
                   callback=InterruptAt(3))
    saved = json.loads((tmp_path / "b" / "state.json").read_text())
    assert saved["n_eval"] < 16 and len(evaluations(tmp_path / "b")) == saved["n_eval"]
    resumed = run_search(problem, None, checkpoint_dir=tmp_path / "b", resume=True)
    np.testing.assert_array_equal(resumed.X, straight.X)
    np.testing.assert_array_equal(resumed.F, straight.F)
    assert evaluations(tmp_path / "b") == evaluations(tmp_path / "a")  # nothing lost or repeated
    assert resumed.algorithm.evaluator.n_eval == straight.algorithm.evaluator.n_eval == 16


def test_checkpoint_loads_detached_and_is_signed(tmp_path, problem):
    run_search(problem, NSGA2(pop_size=4), ("n_gen", 1), seed=0, checkpoint_dir=tmp_path)
    algorithm, state = load_checkpoint(tmp_path)
    assert state["generation"] == 1 and algorithm.problem.model is None

    # a checkpoint is authenticated: one changed byte and it is refused (unless trusted)
    data = bytearray((tmp_path / "algorithm.pkl").read_bytes())
    data[-10] ^= 1
    (tmp_path / "algorithm.pkl").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="changed since.*--trust-checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("killed_at", ["algorithm.pkl", "state.json"])
def test_a_save_killed_between_its_files_resumes_cleanly(problem, tmp_path, monkeypatch, killed_at):
    import pathlib

    straight = run_search(problem, NSGA2(pop_size=4), ("n_gen", 3), seed=2, checkpoint_dir=tmp_path / "a")
    original, renames = pathlib.Path.replace, []

    def replace(self, target):
        if self.name == f"{killed_at}.tmp":
            renames.append(self)
            if len(renames) == 2:  # the save after generation 2: killed before this rename
                raise KeyboardInterrupt
        return original(self, target)

    monkeypatch.setattr(pathlib.Path, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        run_search(problem, NSGA2(pop_size=4), ("n_gen", 3), seed=2, checkpoint_dir=tmp_path / "b")
    monkeypatch.setattr(pathlib.Path, "replace", original)
    # killed before the first rename the previous save stands; between the two, the new one is whole
    _, state = load_checkpoint(tmp_path / "b")
    assert state["generation"] == (1 if killed_at == "algorithm.pkl" else 2)
    assert not list((tmp_path / "b").glob("*.tmp"))
    resumed = run_search(problem, None, checkpoint_dir=tmp_path / "b", resume=True)
    np.testing.assert_array_equal(resumed.F, straight.F)
    assert evaluations(tmp_path / "b") == evaluations(tmp_path / "a")
