"""Copy the benchmark tables (results/NAME.md) into README.md and docs/benchmarks.md, so the
documents cannot drift from the results.

    python benchmarks/readme.py            # rewrite the documents' sections from the results
    python benchmarks/readme.py --check    # exit 1 if a section differs from its results file

A section is the text between ``<!-- results: NAME -->`` and ``<!-- /results -->``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")
SECTION = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def render(readme: str, results: Path = RESULTS) -> str:
    """``readme`` with every results section replaced by its file's contents."""
    def section(match: re.Match) -> str:
        path = results / f"{match['name']}.md"
        if not path.is_file():
            raise SystemExit(f"README names results '{match['name']}' but {path} does not exist")
        return match.group(1) + path.read_text().rstrip("\n") + "\n" + match.group(4)

    return SECTION.sub(section, readme)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for path in DOCUMENTS:
        current = path.read_text()
        rendered = render(current)
        if args.check:
            stale += [f"{path.relative_to(ROOT)}: {m['name']}" for m, n in
                      zip(SECTION.finditer(current), SECTION.finditer(rendered)) if m["body"] != n["body"]]
        elif rendered != current:
            path.write_text(rendered)
    if stale:
        print(f"sections out of date: {', '.join(stale)}: run python benchmarks/readme.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
