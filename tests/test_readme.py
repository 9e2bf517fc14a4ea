"""The README's benchmark tables are the files benchmarks/ wrote (benchmarks/readme.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_module():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_equal_the_benchmark_results(tmp_path):
    module = _readme_module()
    readme = (ROOT / "README.md").read_text()
    assert len(module.SECTION.findall(readme)) >= 4
    assert module.render(readme) == readme, "run: python benchmarks/readme.py"
    # and the check can fail: a changed results file makes the section stale
    results = tmp_path / "results"
    results.mkdir()
    for path in (ROOT / "benchmarks" / "results").glob("*.md"):
        (results / path.name).write_text(path.read_text() + "\nchanged\n")
    assert module.render(readme, results) != readme
