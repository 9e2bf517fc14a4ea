"""The quick-start notebook's code runs (on a tiny model instead of SmolLM2)."""

import json
from pathlib import Path

import optishear_moo
from tests.conftest import make_tiny_model

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tiny_tokenizer, tmp_path, monkeypatch):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    code = [c.replace("seq_len=1024", "seq_len=32").replace("seq_len=128", "seq_len=32")
            .replace("pop_size=8", "pop_size=4").replace("initial_population(8)", "initial_population(4)")
            .replace('("n_gen", 4)', '("n_gen", 2)').replace("verbose=True", "verbose=False")
            for c in code]
    monkeypatch.setattr(optishear_moo, "load_model", lambda name: (make_tiny_model("llama"), tiny_tokenizer))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for source in code:
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)  # noqa: S102
    assert (tmp_path / "plan.json").is_file() and (tmp_path / "pareto.png").is_file()
    assert (tmp_path / "pruned-smollm2" / "config.json").is_file()
