"""Data checkpoints: a resumed search replays its evaluation log into the same algorithm state."""

import json
import os

import numpy as np
import pytest
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.soo.nonconvex.cmaes import CMAES

from optishear_moo import OptiShearProblem
from optishear_moo.search import CheckpointError, SearchRun, read_state, run_search
from tests.cli.conftest import evaluations
from tests.conftest import InterruptAt, lock_held_elsewhere


def test_resume_after_an_interruption_equals_an_uninterrupted_run(problem, tmp_path):
    straight = run_search(problem, NSGA2(pop_size=4), ("n_gen", 4), SearchRun(tmp_path / "a", seed=2))
    with pytest.raises(KeyboardInterrupt):  # dies while generation 3 is under way
        run_search(problem, NSGA2(pop_size=4), ("n_gen", 4), SearchRun(tmp_path / "b", seed=2),
                   callback=InterruptAt(3))
    saved = read_state(tmp_path / "b")
    assert saved["generation"] == 2 and saved["n_eval"] == 8 == len(evaluations(tmp_path / "b"))
    resumed = run_search(problem, NSGA2(pop_size=4), ("n_gen", 4),
                         SearchRun(tmp_path / "b", resume=True, seed=2))
    np.testing.assert_array_equal(resumed.X, straight.X)
    np.testing.assert_array_equal(resumed.F, straight.F)
    assert evaluations(tmp_path / "b") == evaluations(tmp_path / "a")  # nothing lost or repeated
    assert resumed.algorithm.evaluator.n_eval == straight.algorithm.evaluator.n_eval == 16
    # the replay asks nothing of the model: only the two generations after the checkpoint ran
    assert not (tmp_path / "b" / "algorithm.pkl").exists()


def test_replay_restores_any_algorithm_with_a_random_state_of_its_own(tmp_path, tiny_llama, calibration):
    problem = OptiShearProblem(tiny_llama, calibration, 0.5, objectives=("kl",), batch_size=3)
    straight = run_search(problem, CMAES(popsize=4), ("n_gen", 3), SearchRun(tmp_path / "a", seed=1))
    with pytest.raises(KeyboardInterrupt):
        run_search(problem, CMAES(popsize=4), ("n_gen", 3), SearchRun(tmp_path / "b", seed=1),
                   callback=InterruptAt(2))
    resumed = run_search(problem, CMAES(popsize=4), ("n_gen", 3),
                         SearchRun(tmp_path / "b", resume=True, seed=1))
    np.testing.assert_array_equal(resumed.X, straight.X)
    assert evaluations(tmp_path / "b") == evaluations(tmp_path / "a")


def test_a_finished_run_resumes_without_work_and_without_writing(problem, tmp_path):
    run_search(problem, NSGA2(pop_size=4), ("n_gen", 2), SearchRun(tmp_path, seed=0))
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name != ".lock"}
    problem.model = None  # the replay never touches the model
    try:
        result = run_search(problem, NSGA2(pop_size=4), ("n_gen", 2),
                            SearchRun(tmp_path, resume=True, seed=0))
    finally:
        problem.model = problem.evaluator.model
    assert result.algorithm.n_gen == 3
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name != ".lock"} == before


def test_a_save_killed_after_appending_its_records_resumes_cleanly(problem, tmp_path, monkeypatch):
    from optishear_moo.search import checkpoint as module

    straight = run_search(problem, NSGA2(pop_size=4), ("n_gen", 3), SearchRun(tmp_path / "a", seed=2))
    original, calls = module.write_atomically, []

    def write(path, data):  # the save after generation 2 dies between the log and state.json
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(path, data)

    monkeypatch.setattr(module, "write_atomically", write)
    with pytest.raises(KeyboardInterrupt):
        run_search(problem, NSGA2(pop_size=4), ("n_gen", 3), SearchRun(tmp_path / "b", seed=2))
    monkeypatch.setattr(module, "write_atomically", original)
    assert read_state(tmp_path / "b")["generation"] == 1 and len(evaluations(tmp_path / "b")) == 8
    resumed = run_search(problem, NSGA2(pop_size=4), ("n_gen", 3),
                         SearchRun(tmp_path / "b", resume=True, seed=2))
    np.testing.assert_array_equal(resumed.F, straight.F)
    assert evaluations(tmp_path / "b") == evaluations(tmp_path / "a")
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.endswith(".tmp")]


def _run(problem, directory, **run):
    return run_search(problem, NSGA2(pop_size=4), ("n_gen", 2), SearchRun(directory, seed=0, **run))


def test_what_a_checkpoint_holds_is_checked_before_it_is_used(problem, tmp_path, tiny_tokenizer):
    _run(problem, tmp_path)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["format"] == "optishear-moo/checkpoint-v3" and state["fingerprint"] == problem.fingerprint

    def resume_fails(match):
        with pytest.raises(CheckpointError, match=match):
            _run(problem, tmp_path, resume=True)

    log = (tmp_path / "evaluations.jsonl").read_text()
    (tmp_path / "evaluations.jsonl").write_text(log.replace('"F": [', '"F": ["$(touch /tmp/x)", ', 1))
    resume_fails("line 1: its objectives holds")
    records = [json.loads(line) for line in log.splitlines()]
    records[5]["X"][0] += 0.25  # a changed candidate
    (tmp_path / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    resume_fails("did not replay")
    (tmp_path / "evaluations.jsonl").write_text(log)
    for field, value, match in (("fingerprint", "0" * 64, "another model"),
                                ("records", "x", "no valid 'records'"),
                                ("format", "optishear-moo/checkpoint-v2", "format"),
                                ("algorithm", "GA", "written by GA")):
        (tmp_path / "state.json").write_text(json.dumps({**state, field: value}))
        resume_fails(match)
    (tmp_path / "state.json").write_text("{not json")
    resume_fails("damaged")
    (tmp_path / "state.json").write_text(json.dumps(state))
    _run(problem, tmp_path, resume=True)  # the untouched files resume


def test_writes_never_follow_links_and_reads_refuse_them(problem, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    _run(problem, run)
    log = run / "evaluations.jsonl"
    log.unlink()
    log.symlink_to(victim)  # appending would write into the victim
    with pytest.raises(ValueError, match="symbolic link"):
        run_search(problem, NSGA2(pop_size=4), ("n_gen", 3), SearchRun(run, resume=True, seed=0))
    assert victim.read_text() == "precious\n"
    log.unlink()
    os.link(victim, log)  # a hard link: refused as well
    with pytest.raises(ValueError, match="hard link"):
        run_search(problem, NSGA2(pop_size=4), ("n_gen", 3), SearchRun(run, resume=True, seed=0))
    assert victim.read_text() == "precious\n"
    # a fresh run replaces a linked state.json instead of writing through it
    (run / "state.json").unlink()
    (run / "state.json").symlink_to(victim)
    log.unlink()
    _run(problem, run)
    assert victim.read_text() == "precious\n" and not (run / "state.json").is_symlink()


def test_one_writer_per_directory(problem, tmp_path):
    from optishear_moo.outputs import DirectoryLock

    with DirectoryLock(tmp_path):  # held by this process: the search takes it again (re-entrant)
        _run(problem, tmp_path)
    with lock_held_elsewhere(tmp_path), pytest.raises(ValueError, match="another run .* is writing to"):
        _run(problem, tmp_path, resume=True)
    _run(problem, tmp_path, resume=True)  # a dead holder's lock is gone with it


def test_resuming_with_other_settings_or_a_detached_problem_is_refused(problem, tmp_path, tiny_llama,
                                                                       calibration):
    from optishear_moo.errors import SettingError

    run_search(problem, NSGA2(pop_size=4), ("n_gen", 2),
               SearchRun(tmp_path, seed=0, settings={"pop_size": 4}), settings={"n_gen": 2})
    with pytest.raises(SettingError, match="pop_size is 8 here but the run .* was made with 4"):
        run_search(problem, NSGA2(pop_size=8), ("n_gen", 2),
                   SearchRun(tmp_path, resume=True, seed=0, settings={"pop_size": 8}), settings={"n_gen": 2})
    with pytest.raises(SettingError, match="already did n_gen 2"):
        run_search(problem, NSGA2(pop_size=4), ("n_gen", 1),
                   SearchRun(tmp_path, resume=True, seed=0, settings={"pop_size": 4}), settings={"n_gen": 1})
    from tests.conftest import make_tiny_model

    # the same config and calibration, other weights (a model re-initialised): not the same problem
    other = OptiShearProblem(make_tiny_model("llama", seed=1), calibration, 0.5, batch_size=3,
                             reconstruction_tokens=32)
    with pytest.raises(CheckpointError, match="another model, other calibration"):
        run_search(other, NSGA2(pop_size=4), ("n_gen", 2),
                   SearchRun(tmp_path, resume=True, seed=0, settings={"pop_size": 4}), settings={"n_gen": 2})
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        run_search(problem, NSGA2(pop_size=4), ("n_gen", 2), SearchRun(tmp_path / "empty", resume=True))
