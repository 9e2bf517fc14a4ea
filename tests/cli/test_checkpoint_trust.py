"""``--resume`` on a run directory never runs code from it: hostile checkpoints are refused with
one error line, before the model loads, and leave the directory as it was."""

import hashlib
import json
import pickle
import shutil

import numpy as np
import pytest

from optishear_moo.cli import main
from optishear_moo.search.checkpoint import KEY_ENVIRONMENT
from tests.cli.conftest import FAST, PRUNE_WINDOWS
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_tokenizer):
    """A finished two-generation search: the directory a user (or an attacker) would resume."""
    root = tmp_path_factory.mktemp("run")
    make_tiny_model("llama").save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    output = root / "search"
    assert main(["search", "--model", str(root / "model"), "--pop", "4", "--gens", "2", "--output",
                 str(output), *FAST, *PRUNE_WINDOWS]) == 0
    return output


def _fingerprint(directory):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def _resume(directory, *extra):
    return main(["search", "--output", str(directory), "--resume", "--gens", "3", "--quiet", *extra])


def _hostile_payloads(marker):
    class Exploit:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    def stack_global(module, name):
        return (b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)])
                + name.encode() + b"\x93")

    command = f"touch {marker}".encode()
    call = b"(\x8c" + bytes([len(command)]) + command + b"tR"
    inner = pickle.dumps(Exploit(), protocol=5)
    return {
        "plain os.system": pickle.dumps(Exploit(), protocol=5),
        "dotted name through pymoo": b"\x80\x04" + stack_global("pymoo.util.misc", "os.system") + call + b".",
        "dotted name through optishear_moo": b"\x80\x04" + stack_global("optishear_moo.search.checkpoint",
                                                                         "os.system") + call + b".",
        "allowed class called": b"\x80\x04" + stack_global("pymoo.algorithms.moo.nsga2", "NSGA2") + b")R.",
        "method installed by BUILD": b"\x80\x04" + stack_global("pymoo.core.callback", "Callback") + b")\x81}"
                                     + b"\x8c\x0c__setstate__" + stack_global("numpy", "sum") + b"sb.",
        "INST opcode": f"(ios\nsystem\n(S'touch {marker}'\ntR.".encode(),
        "object array": pickle.dumps(np.array([Exploit()], dtype=object), protocol=5),
        "nested pickle": b"\x80\x04" + stack_global("pickle", "loads") + b"(C" + bytes([len(inner)]) + inner
                         + b"tR.",
        "not a pickle": b"\x00\x01garbage",
    }


def test_hostile_checkpoints_are_refused_through_the_cli(finished_run, tmp_path, capsys):
    marker = tmp_path / "owned"
    for label, payload in _hostile_payloads(marker).items():
        directory = tmp_path / label.replace(" ", "-")
        shutil.copytree(finished_run, directory)
        (directory / "algorithm.pkl").write_bytes(payload)
        before = _fingerprint(directory)
        for extra in ((), ("--trust-checkpoint",)):  # refused by the signature, then by the reader
            capsys.readouterr()
            assert _resume(directory, *extra) == 2, label
            error = capsys.readouterr().err.strip().splitlines()
            assert len(error) == 1 and error[0].startswith("optishear-moo: error:"), (label, error)
            assert "Traceback" not in error[0]
            if not extra:
                assert "--trust-checkpoint" in error[0]
            assert _fingerprint(directory) == before, label
        assert not marker.exists(), label


def test_damaged_and_foreign_checkpoints(finished_run, tmp_path, capsys, monkeypatch):
    truncated = tmp_path / "truncated"
    shutil.copytree(finished_run, truncated)
    data = (truncated / "algorithm.pkl").read_bytes()
    (truncated / "algorithm.pkl").write_bytes(data[: len(data) // 2])
    assert _resume(truncated, "--trust-checkpoint") == 2
    assert "is damaged" in capsys.readouterr().err
    other_version = tmp_path / "other-version"
    shutil.copytree(finished_run, other_version)
    state = json.loads((other_version / "state.json").read_text())
    (other_version / "state.json").write_text(json.dumps({**state, "format": "optishear-moo/checkpoint-v9"}))
    assert _resume(other_version, "--trust-checkpoint") == 2
    assert "checkpoint-v9" in capsys.readouterr().err
    (other_version / "state.json").write_text("{\"format\": ")
    assert _resume(other_version) == 2
    assert "state.json is damaged" in capsys.readouterr().err
    # a colleague's run (signed with another key) resumes only when trusted
    foreign = tmp_path / "foreign"
    shutil.copytree(finished_run, foreign)
    monkeypatch.setenv(KEY_ENVIRONMENT, str(tmp_path / "colleague.key"))
    assert _resume(foreign) == 2
    assert "another key" in capsys.readouterr().err
    assert _resume(foreign, "--trust-checkpoint") == 0
    assert json.loads((foreign / "report.json").read_text())["n_evaluations"] == 12


def test_resuming_a_finished_search_changes_nothing(finished_run, tmp_path, capsys):
    directory = tmp_path / "again"
    shutil.copytree(finished_run, directory)
    before = _fingerprint(directory)
    for gens in ((), ("--gens", "2")):
        assert main(["search", "--output", str(directory), "--resume", "--quiet", *gens]) == 0
        out = capsys.readouterr().out
        assert "had finished (2 generations, 8 evaluations); nothing was changed" in out
        assert "--gens 7" in out
    assert _fingerprint(directory) == before
