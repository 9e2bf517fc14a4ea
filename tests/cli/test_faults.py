"""Bad input and faults found by probing: one error line, exit code 2, no traceback, nothing left
behind; checked before the model loads where the input allows."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from optishear_moo.cli import main
from tests.cli.conftest import FAST, PRUNE_WINDOWS
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("models")
    for name in ("llama", "gpt2"):
        make_tiny_model(name).save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
    broken = make_tiny_model("llama")
    with torch.no_grad():
        broken.lm_head.weight.fill_(float("nan"))
    broken.save_pretrained(root / "nan")
    tiny_tokenizer.save_pretrained(root / "nan")
    (root / "cut.gguf").write_bytes(b"GGUF" + bytes(100))
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me ".encode("latin-1") * 200)
    (root / "a-file").write_text("not a directory")
    return root


def _fails(capsys, argv, message):
    capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("optishear-moo: error:") and message in error[0], error
    assert "Traceback" not in error[0]


CASES = [
    # (command and flags, message); {m} is the tiny Llama, {root} the fixture folder, {out} the output
    (["prune", "--model", "{m}", "--output", "/proc/optishear-out"], "cannot write --output"),
    (["prune", "--model", "{m}", "--output", "{root}/a-file", "--overwrite"],
     "is a file or link, not a directory"),
    (["prune", "--model", "{m}", "--output", "{root}/a-file/sub"], "is a file"),
    (["prune", "--model", "{root}/cut.gguf", "--output", "{out}"], "could not read the model"),
    (["prune", "--model", "{m}", "--output", "{out}", "--seq-len", "100000"], "longer than the model"),
    (["prune", "--model", "{m}", "--output", "{out}", "--calibration", "/bin/ls"], "not UTF-8"),
    (["prune", "--model", "{m}", "--output", "{out}", "--calibration", "{root}/latin1.txt"], "not UTF-8"),
    (["prune", "--model", "{root}/nan", "--output", "{out}"], "non-finite"),
    (["optishear", "--model", "{root}/nan", "--output", "{out}", "--pop", "2", "--gens", "1", *PRUNE_WINDOWS],
     "NaN"),
    (["optishear", "--model", "{m}", "--output", "{out}", "--prune-seq-len", "100000"],
     "--prune-seq-len 100000 is longer"),
    (["evopress", "--model", "./missing", "--output", "{out}", "--prune-samples", "0"],
     "--prune-samples must be an integer of at least 1"),
    (["optishear", "--model", "./missing", "--output", "{out}", "--target-sparsity", "0.7:0.3"],
     "needs low < high"),
    (["optishear", "--model", "./missing", "--output", "{out}", "--pop", "0"],
     "--pop must be an integer of at least 2"),
    (["evop", "--model", "{m}", "--output", "{out}", "--n-remove", "30"], "[0, 3)"),
    (["evop", "--model", "{m}", "--output", "{out}", "--n-remove", "-1"],
     "--n-remove must be an integer of at least 0"),
    (["darwinlm", "--model", "{root}/gpt2", "--output", "{out}"], "structured pruning supports"),
    (["prune", "--model", "{root}/cut.gguf", "--output", "{out}", "--offload", "disk"],
     "--offload disk reads a safetensors directory"),
    (["darwinlm", "--model", "{m}", "--output", "{out}", "--offload", "disk"],
     "--offload disk scores candidates block by block"),
    (["darwinlm", "--model", "{m}", "--output", "{out}", "--compression", "100"], "--compression"),
    (["darwinlm", "--model", "{m}", "--output", "{out}", "--selection", "one-shot", "--offspring", "0"],
     "--offspring must be an integer of at least 1"),
]


@pytest.mark.parametrize("argv, message", CASES)
def test_bad_input_and_faults_give_one_line_and_leave_nothing(argv, message, model_dirs, tmp_path, capsys):
    output = tmp_path / "out"
    fill = {"m": str(model_dirs / "llama"), "root": str(model_dirs), "out": str(output)}
    argv = [part.format(**fill) for part in argv]
    argv = argv[:1] + FAST + argv[1:]  # the case's own flags come last and win
    _fails(capsys, argv, message)
    assert not output.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no staging or probe left either
    assert (model_dirs / "a-file").read_text() == "not a directory"


def test_a_finished_finetune_keeps_no_training_state(model_dirs, tmp_path):
    output = tmp_path / "tuned"
    assert main(["finetune", "--model", str(model_dirs / "llama"), "--output", str(output), "--tokens", "128",
                 "--seq-len", "32", "--eval-seq-len", "32", "--eval-segments", "1", "--device", "cpu",
                 "--quiet"]) == 0
    assert sorted(path.name for path in output.iterdir()) == [".lock", "model", "report.json"]
    assert AutoModelForCausalLM.from_pretrained(output / "model") is not None
