"""The documents' benchmark tables are the files benchmarks/ wrote (benchmarks/readme.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_module():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_tables_equal_the_benchmark_results(tmp_path):
    module = _readme_module()
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert len(module.SECTION.findall(page)) >= 8
    for path in module.DOCUMENTS:
        text = path.read_text()
        assert module.render(text) == text, f"{path.name}: run python benchmarks/readme.py"
    # and the check can fail: a changed results file makes the section stale
    results = tmp_path / "results"
    results.mkdir()
    for path in (ROOT / "benchmarks" / "results").glob("*.md"):
        (results / path.name).write_text(path.read_text() + "\nchanged\n")
    assert module.render(page, results) != page


def test_the_readme_stays_short_and_the_docs_it_names_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for name in ("optishear", "evopress", "evop", "darwinlm", "cli", "checkpoints", "scaling", "memory",
                 "benchmarks"):
        assert (ROOT / "docs" / f"{name}.md").is_file() and f"docs/{name}.md" in readme, name
