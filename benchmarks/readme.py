"""Copy the benchmark tables (results/NAME.md) into README.md, so the README cannot drift.

    python benchmarks/readme.py            # rewrite the README sections from the results
    python benchmarks/readme.py --check    # exit 1 if a README section differs from its results file

A README section is the text between ``<!-- results: NAME -->`` and ``<!-- /results -->``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
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
    path = ROOT / "README.md"
    current = path.read_text()
    rendered = render(current)
    if args.check:
        stale = [m["name"] for m, n in zip(SECTION.finditer(current), SECTION.finditer(rendered))
                 if m["body"] != n["body"]]
        if stale:
            print(f"README sections out of date: {', '.join(stale)}: run python benchmarks/readme.py")
            return 1
        return 0
    path.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
