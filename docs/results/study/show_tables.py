"""Put each committed table into the docs that show it: the text between `<!-- table: NAME -->` and
`<!-- /table -->` in docs/study.md and README.md becomes docs/results/study/NAME (regenerate.sh runs
this last; a test checks that the docs show what the records give)."""

from __future__ import annotations

import re
from pathlib import Path

STUDY = Path(__file__).resolve().parent
DOCS = [STUDY.parents[2] / "docs" / "study.md", STUDY.parents[2] / "README.md"]
MARKED = re.compile(r"<!-- table: (\S+) -->.*?<!-- /table -->", flags=re.S)


def _filled(match: re.Match) -> str:
    name = match.group(1)
    body = (STUDY / name).read_text().rstrip("\n")
    return f"<!-- table: {name} -->\n{body}\n<!-- /table -->"


if __name__ == "__main__":
    for doc in DOCS:
        doc.write_text(MARKED.sub(_filled, doc.read_text()))
