"""The quick-start notebook's code runs (on a tiny model instead of SmolLM2)."""

import json
from pathlib import Path

import optishear_moo
from tests.conftest import make_tiny_model

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"

# what the test changes to run the notebook on a tiny model in seconds: each must be found once,
# so a notebook changed under the test fails it instead of running something else
SMALLER = {"seq_len=128": "seq_len=32", "seq_len=1024": "seq_len=32", "verbose=True": "verbose=False"}


def test_quickstart_notebook_runs(tiny_tokenizer, tmp_path, monkeypatch):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    source = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
    for old, new in SMALLER.items():
        assert source.count(old) >= 1, f"the notebook no longer holds {old!r}: update the test"
        source = source.replace(old, new)
    monkeypatch.setattr(optishear_moo, "load_model", lambda name: (make_tiny_model("llama"), tiny_tokenizer))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(source, str(NOTEBOOK), "exec"), namespace)  # noqa: S102
    assert (tmp_path / "plan.json").is_file() and (tmp_path / "pareto.png").is_file()
    assert (tmp_path / "pruned-smollm2" / "config.json").is_file()
    assert namespace["res"].algorithm.n_gen - 1 == 3  # the notebook's own budget ran
