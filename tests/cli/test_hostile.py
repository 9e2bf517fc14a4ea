"""A run directory is untrusted input: what a careless or hostile user could do to one, and what
the command line does about it (one error line, nothing written outside the output, no code run)."""

import hashlib
import json
import os
import pickle
import shlex
import shutil
import stat

import pytest
import torch

import optishear_moo.models
from optishear_moo.cli import main
from tests.cli.conftest import FAST, PRUNE_WINDOWS
from tests.conftest import lock_held_elsewhere, make_tiny_model

GENS = ["--pop", "4", "--gens", "2"]


def _argv(model, output, *extra):
    return ["optishear", "--model", str(model), *GENS, "--output", str(output), *FAST, *PRUNE_WINDOWS, *extra]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("model")
    make_tiny_model("llama").save_pretrained(root)
    tiny_tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, model_dir):
    """A finished two-generation search: the directory a user (or an attacker) would resume."""
    output = tmp_path_factory.mktemp("run") / "search"
    assert main(_argv(model_dir, output)) == 0
    return output


@pytest.fixture
def run_copy(finished_run, tmp_path):
    directory = tmp_path / "run"
    shutil.copytree(finished_run, directory)
    return directory


def _files(directory):
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file() and path.name != ".lock"}


def _one_line(capsys, *fragments):
    error = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(error) == 1 and error[0].startswith("optishear-moo: "
                                                   "error:") and "Traceback" not in error[0], error
    assert all(fragment in error[0] for fragment in fragments), error
    return error[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails a test whose command reaches the model's weights."""
    monkeypatch.setattr(optishear_moo.models, "load_model",
                        lambda *a, **k: pytest.fail("the model was loaded"))


def test_a_hostile_log_or_linked_files_write_nothing_outside_the_output(run_copy, model_dir, tmp_path,
                                                                        capsys):
    victim = tmp_path / "bashrc"
    victim.write_text("# the user's shell start-up file\n")
    log = run_copy / "evaluations.jsonl"
    (run_copy / "evaluations.jsonl.tmp").symlink_to(victim)  # the name the old code wrote through
    lines = log.read_text().splitlines()
    lines[3] = lines[3].replace('"F": [', '"F": ["$(touch /tmp/x)", ', 1)
    log.write_text("\n".join(lines) + "\n")
    before = _files(run_copy)
    assert main(_argv(model_dir, run_copy, "--gens", "3", "--resume")) == 2
    _one_line(capsys, "evaluations.jsonl, line 4", "start a new run")
    assert victim.read_text() == "# the user's shell start-up file\n" and _files(run_copy) == before
    log.unlink()
    log.symlink_to(victim)  # the log itself a link: later generations would append there
    assert main(_argv(model_dir, run_copy, "--gens", "3", "--resume")) == 2
    _one_line(capsys, "symbolic link")
    assert victim.read_text() == "# the user's shell start-up file\n"


def test_no_code_path_of_the_cli_unpickles(run_copy, model_dir, tmp_path, monkeypatch):
    marker = tmp_path / "owned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (run_copy / "algorithm.pkl").write_bytes(pickle.dumps(Exploit()))  # a pickle where old versions read one
    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, lambda *a, **k: pytest.fail("something was unpickled"))
    monkeypatch.setattr(pickle, "Unpickler", None)
    # no key, no trust flag: a colleague's run directory is data, resumed like one's own
    monkeypatch.setenv("OPTISHEAR_MOO_CHECKPOINT_KEY", "deadbeef" * 8)
    monkeypatch.chdir(tmp_path)
    assert main(_argv(model_dir, run_copy, "--gens", "3", "--resume")) == 0
    assert json.loads((run_copy / "report.json").read_text())["n_evaluations"] == 12
    assert not marker.exists() and not (tmp_path / ("deadbeef" * 8)).exists()


def test_settings_in_state_json_are_compared_never_copied(run_copy, model_dir, monkeypatch, capsys,
                                                          no_model_load):
    from optishear_moo.search import pool

    monkeypatch.setattr(pool.RayPool, "__init__", lambda *a, **k: pytest.fail("a Ray pool was started"))
    state = json.loads((run_copy / "state.json").read_text())
    state["settings"].update(ray_address="203.0.113.7:6379", workers=1)
    (run_copy / "state.json").write_text(json.dumps(state))
    assert main(_argv(model_dir, run_copy, "--gens", "3", "--resume")) == 2
    _one_line(capsys, "--ray-address is None here but the run", "203.0.113.7:6379")


def test_a_second_run_on_the_same_output_is_refused(run_copy, model_dir, capsys, no_model_load):
    with lock_held_elsewhere(run_copy):
        before = _files(run_copy)
        for extra in (["--resume", "--gens", "3"], ["--overwrite"]):
            assert main(_argv(model_dir, run_copy, *extra)) == 2
            _one_line(capsys, "another run", "is writing to")
            assert _files(run_copy) == before


def test_a_run_interrupted_after_its_last_generation_finishes_on_resume(model_dir, tmp_path, monkeypatch,
                                                                        capsys):
    from optishear_moo.cli import job

    finish = job.Job.finish
    monkeypatch.setattr(job.Job, "finish", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    output = tmp_path / "interrupted"
    assert main(_argv(model_dir, output)) == 130
    hint = capsys.readouterr().err.strip().split("continue with: ", 1)[1]
    assert not (output / "model").exists() and not (output / "report.json").exists()
    command = shlex.split(hint)
    assert command[0] == "optishear-moo" and command[-1] == "--resume" and "--gens" in command
    monkeypatch.setattr(job.Job, "finish", finish)
    assert main(command[1:]) == 0  # the printed command finishes the run: model and report written
    assert (output / "model" / "config.json").is_file()
    assert json.loads((output / "report.json").read_text())["n_evaluations"] == 8
    # an interrupted extension: the hint repeats the new --gens
    monkeypatch.setattr(job.Job, "finish", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main([*command[1:-1], "--gens", "3", "--resume"]) == 130
    hint = shlex.split(capsys.readouterr().err.strip().split("continue with: ", 1)[1])
    last = len(hint) - 1 - hint[::-1].index("--gens")  # the flag given last is the one that counts
    assert hint[last + 1] == "3" and hint[-1] == "--resume"


def test_another_model_with_the_same_config_is_refused(run_copy, model_dir, tmp_path, tiny_tokenizer, capsys):
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    run_model = tmp_path / "model"
    shutil.copytree(model_dir, run_model)
    state = json.loads((run_copy / "state.json").read_text())
    state["settings"]["model"] = str(run_model)  # the run was made with a model at this path...
    (run_copy / "state.json").write_text(json.dumps(state))
    make_tiny_model("llama", seed=1).save_pretrained(run_model)  # ...whose weights changed since
    assert main(_argv(run_model, run_copy, "--gens", "3", "--resume")) == 2
    _one_line(capsys, "another model")


@pytest.mark.parametrize("argv, message", [
    (["prune", "--device", "tpu"], "--device 'tpu' is unknown"),
    (["prune", "--calibration", "/no/such/file.txt"], "unknown corpus"),
    (["prune", "--eval-segments", "0"], "--eval-segments must be a positive integer"),
    (["optishear", "--layerwise", "bogus"], "--layerwise 'bogus' is unknown"),
    (["optishear", "--low-fidelity", "0"], "--low-fidelity must be in (0, 1]"),
    (["optishear", "--n-samples", "4", "--seq-len", "32", "--prune-seq-len", "100000"],
     "--prune-seq-len 100000"),
    (["finetune", "--teacher", "./no-such-teacher"], "neither a model directory nor a .gguf file"),
    (["evop", "--n-remove", "1", "--resume"], "is of the optishear command, not evop"),
])
def test_errors_come_before_the_model_loads(argv, message, model_dir, run_copy, tmp_path, capsys,
                                            no_model_load):
    output = run_copy if "--resume" in argv else tmp_path / "out"
    assert main([argv[0], "--model", str(model_dir), "--output", str(output), "--quiet", *argv[1:]]) == 2
    _one_line(capsys, message)
    assert output == run_copy or not output.exists()


def test_outputs_follow_the_umask(model_dir, tmp_path):
    previous = os.umask(0o022)
    try:
        assert main(["prune", "--model", str(model_dir), "--output", str(tmp_path / "out"), *FAST]) == 0
    finally:
        os.umask(previous)
    for path in (tmp_path / "out").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_a_local_directory_with_a_broken_config_is_named_as_such(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "config.json").write_text("{not json")
    assert main(["prune", "--model", str(broken), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    error = _one_line(capsys, "could not read the model")
    assert "hub" not in error


def test_the_library_refuses_what_the_command_line_refuses(tiny_llama, calibration, tiny_tokenizer):
    from optishear_moo import LevelSearchProblem, OptiShearProblem, load_calibration

    for problem in (OptiShearProblem, LevelSearchProblem):
        with pytest.raises(ValueError, match="needs low < high"):
            problem(tiny_llama, calibration, (0.7, 0.3))
    with pytest.raises(ValueError, match="longer than the model's context of 256 tokens"):
        load_calibration(tiny_tokenizer, 2, 100000, model=tiny_llama)
    with pytest.raises(ValueError, match="longer than the model's context"):
        OptiShearProblem(tiny_llama, torch.zeros(1, 300, dtype=torch.long), 0.5)
